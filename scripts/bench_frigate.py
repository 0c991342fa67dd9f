#!/usr/bin/env python3
"""Per-frame latency through the Frigate endpoint versus in-process, on the zoo detector.

Model: ``zoo/detector/v1`` (scripts/make_detector_model.py), the bundled SSD-style
detector: ``uint8 [1, 320, 320, 3]`` in (307200 bytes, the size of a frame from
Frigate's default 320×320 model), the four ``TFLite_Detection_PostProcess``
outputs.  Every measurement uses the same frame (:func:`frame`, three detections).

1. in process: the daemon's own ``LoadedModel.run()`` (same runtime, delegate,
   ``num_threads = 1``) plus :func:`edged.runtime.detection.ssd`, i.e. what a
   Frigate detector plugin running the model itself would pay;
2. through the adapter: ``edged serve`` with ``[frigate] endpoint`` on ipc, and a
   REQ socket that sends exactly what Frigate's zmq plugin sends (a JSON header
   frame and the tensor bytes) and reads the 480-byte reply; sequential frames;
3. for reference, the same frame as an ordinary ``predict`` on the daemon's
   predict endpoint (edged's own client), i.e. the adapter's cost over edged's
   protocol.

Usage::

    python scripts/bench_frigate.py [--frames 500] [--runtime auto] [--out FILE.json]

Prints one JSON object (p50/p99/mean in ms for each path, and the differences).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # scripts/bench.py; importing it also puts the checkout on sys.path  # noqa: E402
from bench import bench_env, log, machine_facts, ms, scratch, start_daemon  # noqa: E402
from make_detector_model import sample_image  # noqa: E402

ZOO_DETECTOR = bench.ROOT / "zoo" / "detector" / "v1"


def frame() -> Any:
    return sample_image()


def measure_inprocess(vdir: Path, runtime: str, n: int) -> dict[str, Any]:
    from edged.runtime import detection
    from edged.runtime.backends import select_backend
    from edged.runtime.model import LoadedModel, LoadSpec

    backend = select_backend(runtime)
    model = LoadedModel.load(LoadSpec(name="detector", version="v1", path=vdir, backend=backend, delegate="auto",
                                      workers=1, num_threads=1))
    x = frame()
    for _ in range(20):
        model.run([x])
    wall, invoke, post = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        r = model.run([x])
        t1 = time.perf_counter()
        rows = detection.ssd(r.outputs, 0.4)
        t2 = time.perf_counter()
        wall.append(t2 - t0)
        post.append(t2 - t1)
        invoke.append(r.invoke_us / 1e6)
    assert rows.any()
    return {"runtime": backend.describe(), "delegate": model.delegate, "run_plus_postprocess": ms(wall),
            "invoke_only": ms(invoke), "postprocess_only": ms(post)}


def measure_frigate(endpoint: str, n: int) -> dict[str, Any]:
    import numpy as np
    import zmq

    x = frame()
    header = json.dumps({"shape": list(x.shape), "dtype": x.dtype.name, "model_type": "ssd"}).encode()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)  # Frigate uses 200 ms; a bench must not hide slow frames as zeros
    sock.connect(endpoint)
    sock.send_multipart([json.dumps({"model_request": True, "model_name": "bench.tflite"}).encode()])
    hello = json.loads(sock.recv_multipart()[0])
    assert hello == {"model_available": True, "model_loaded": True}, hello
    times = []
    rows = None
    for i in range(n + 20):
        t0 = time.perf_counter()
        sock.send_multipart([header, memoryview(x.tobytes(order="C"))])
        reply = sock.recv_multipart()
        if i >= 20:
            times.append(time.perf_counter() - t0)
        rows = np.frombuffer(reply[0], np.float32).reshape(20, 6)
    sock.close(0)
    ctx.term()
    assert rows is not None and rows.any(), "the bench frame should have detections"
    return ms(times)


def measure_predict(endpoint: str, n: int) -> dict[str, Any]:
    from edged.client import Client

    x = frame()
    times = []
    with Client(endpoint, timeout=10) as c:
        for i in range(n + 20):
            t0 = time.perf_counter()
            c.predict(x)
            if i >= 20:
                times.append(time.perf_counter() - t0)
    return ms(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=500)
    p.add_argument("--runtime", default="auto")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = p.parse_args(argv)
    result: dict[str, Any] = {"model": "zoo/detector/v1", "frames": args.frames}
    log("in process")
    result["in_process"] = measure_inprocess(ZOO_DETECTOR, args.runtime, args.frames)
    with scratch("edged-bf-", args.keep) as (workdir, daemons):
        repo = workdir / "repo"
        shutil.copytree(ZOO_DETECTOR, repo / "detector" / "v1")
        frigate = f"ipc://{workdir}/zmq_detector"
        (workdir / "edged.toml").write_text(f'[frigate]\nendpoint = "{frigate}"\n')
        d = start_daemon(daemons, repo, f"ipc://{workdir}/p.sock", f"ipc://{workdir}/c.sock", workdir,
                         args.runtime, 1, bench_env(), "frigate")
        log("through the Frigate endpoint")
        result["frigate_endpoint"] = measure_frigate(frigate, args.frames)
        log("edged predict endpoint")
        result["predict_endpoint"] = measure_predict(d.endpoint, args.frames)
    inproc = result["in_process"]["run_plus_postprocess"]
    result["adapter_overhead_ms"] = {
        k: round(result["frigate_endpoint"][k] - inproc[k], 4) for k in ("p50_ms", "p99_ms", "mean_ms")}
    result["machine"] = machine_facts(result["in_process"]["runtime"])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
