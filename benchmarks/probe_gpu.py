"""GPU probe (not part of run.py): per-step cost of simulate / sweep / bare scan on MC, marginal
(two step counts), and kernel counts of the compiled loop bodies."""
import json, os, re, sys, time
sys.path[:0] = ["src", "benchmarks"]
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import eosflow
import _problems as P

out = os.environ.get("OUT", "/tmp")
res = {"device": str(jax.devices()[0]), "jax": jax.__version__}

def tm(fn, rep=5):
    jax.block_until_ready(fn())
    ts = []
    for _ in range(rep):
        t0 = time.perf_counter(); jax.block_until_ready(fn()); ts.append(time.perf_counter() - t0)
    return float(np.median(ts))

for name in ["mc", "linreg-5000"]:
    p = P.build(name, "float64")
    r = {}
    for S in (200, 1000):
        r[f"sim_re=S_{S}"] = tm(lambda: eosflow.simulate(p.loss, p.w0, p.lr, p.wd, steps=S, record_every=S))
        r[f"sim_re=1_{S}"] = tm(lambda: eosflow.simulate(p.loss, p.w0, p.lr, p.wd, steps=S))
        for B in (1, 64, 256):
            lrs = np.linspace(0.5, 1.5, B) * p.lr
            r[f"sweep_B{B}_{S}"] = tm(lambda: eosflow.sweep(p.loss, p.w0, lrs, [p.wd], steps=S, record_every=S, progress=False))
        def bare(w, lr, wd, S=S):
            vg = jax.value_and_grad(p.loss)
            def body(w, _):
                l, g = vg(w); return (1 - lr * wd) * w - lr * g, l
            return jax.lax.scan(body, w, None, length=S)
        bj = jax.jit(bare)
        r[f"bare_{S}"] = tm(lambda: bj(p.w0, p.lr, p.wd))
    r["sim_steps1"] = tm(lambda: eosflow.simulate(p.loss, p.w0, p.lr, p.wd, steps=1))
    r["sweep64_steps1"] = tm(lambda: eosflow.sweep(p.loss, p.w0, np.linspace(0.5, 1.5, 64) * p.lr, [p.wd], steps=1, progress=False))
    marg = {k[:-5]: (r[k[:-5] + "_1000"] - r[k[:-5] + "_200"]) / 800 * 1e6 for k in r if k.endswith("_1000")}
    r["marginal_us_per_step"] = marg
    res[name] = r
    print(name, json.dumps(r, indent=1), flush=True)

# kernel counts in compiled HLO of simulate (MC)
try:
    from eosflow import simulate as S_mod
    p = P.build("mc", "float64")
    txt = jax.jit(lambda w: eosflow.simulate(p.loss, w, p.lr, p.wd, steps=10, record_every=10, check_invariance=False).w_final).lower(p.w0).compile().as_text()
    open(os.path.join(out, "sim_mc.hlo.txt"), "w").write(txt)
    res["sim_hlo_counts"] = {k: len(re.findall(k, txt)) for k in map(re.escape, [" fusion", "custom-call", " while", " conditional", " dot("])}
except Exception as e:
    res["hlo_err"] = repr(e)
json.dump(res, open(os.path.join(out, "probe.json"), "w"), indent=1)
print(json.dumps(res.get("sim_hlo_counts")))
