"""The plan phase keeps no per-example state on the driver: planned in a fresh process at N and
8N examples (plan partitions of the same size), the driver's peak memory must not grow. The old
driver-side plan held about 1.3 KB per example, which would add about 90 MiB here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, pyarrow as pa, ray, ray.data
    from mm1data.config import BuildConfig
    from mm1data.pack import phase
    from mm1data.report import StageLog
    from mm1data.runners.executor import Context, Data, Output, Stored
    from mm1data.runners.ray_session import ray_session
    from mm1data.runners.shuffle import hash64
    from mm1data.runners.workdir import WorkDir
    from mm1data.tokens.render import EXAMPLE

    n, out = int(sys.argv[1]), sys.argv[2]
    phase.EXAMPLES_PER_PARTITION = 10_000

    def examples(batch):
        i = batch["id"]
        rng = np.random.default_rng(int(i[0]))
        kind = rng.choice(3, len(i), p=[0.6, 0.3, 0.1])
        stream = np.array(["caption", "interleaved", "text"], dtype=object)[kind]
        images = np.where(kind == 0, 1, np.where(kind == 1, rng.integers(1, 8, len(i)), 0))
        extra = rng.integers(10, 900, len(i))
        tokens = np.where(kind == 2, rng.integers(300, 4096, len(i)), images * 146 + extra)
        keys = [f"{s}:gen:{k}:{k}#0" for s, k in zip(stream.tolist(), i.tolist())]
        cols = {
            "key": keys, "key_hash": hash64(keys), "stream": stream.tolist(),
            "id": [str(k) for k in i.tolist()],
            "part": np.zeros(len(i), np.int32), "lineage": [{"source": "g", "offset": int(k)} for k in i],
            "n_tokens": tokens.astype(np.int32), "n_images": images.astype(np.int32),
            "image_bytes": images.astype(np.int64) * 1000,
        }
        nulls = {f.name: pa.array([None] * len(i), f.type) for f in EXAMPLE if f.name not in cols}
        return pa.table({f.name: cols.get(f.name, nulls.get(f.name)) for f in EXAMPLE}, schema=EXAMPLE)

    with ray_session(num_cpus=2):
        ds = ray.data.range(n, override_num_blocks=4)
        ds = ds.map_batches(examples, batch_format="numpy", batch_size=None).materialize()
        data = Data()
        data.add(Stored("tokenize", Output("examples", "tokenize", EXAMPLE), kept=n, dataset=ds))
        ctx = Context(out, WorkDir(out), StageLog(quiet=True))
        placements = phase.PlanPhase(BuildConfig(shard_size=50)).run(data, ctx)["placements"]
        placements.write_parquet(out + "/placements")
        sums = ctx.info["plan"]["sums"]
    used = sum(v for k, v in sums.items() if k.startswith("used/"))
    left = sum(v for k, v in sums.items() if k.startswith("rendered/")) - used
    print(json.dumps({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "partitions": ctx.info["plan"]["partitions"], "used": used, "left": left}))
    """
)


def _plan(n: int, tmp_path) -> dict:
    out = tmp_path / f"plan-{n}"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n), str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_plan_driver_memory_does_not_grow_with_the_examples(tmp_path):
    small, large = _plan(10_000, tmp_path), _plan(80_000, tmp_path)
    print(small, large)
    assert (small["partitions"], large["partitions"]) == (1, 8)
    assert small["used"] + small["left"] == 10_000 and large["used"] + large["left"] == 80_000
    assert large["maxrss_mib"] - small["maxrss_mib"] < 30
