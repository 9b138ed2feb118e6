"""Speed benchmark: seconds per video, naive path against the project's path.

    python bench/speed.py --videos ../shared/media/videos --json var/bench.json

In one run, on the same videos, with random-init members of the real
architectures (speed does not depend on the weights):

(a) naive: every frame decoded and converted to RGB, then N picked; BlazeFace
    run frame by frame in NCHW with every tile resized on its own; each member
    run eagerly in fp32 NCHW, one crop at a time, under no_grad;
(b) optimized: ``ensemble.pipeline.analyze`` as shipped (key-frame seeking,
    NONREF skipping, pyramid tiles, batches; members in ONNX Runtime on CPU,
    exported once before timing, as a worker does once per weights version).

Both paths run once untimed on the first video first (``--warmup``), so
first-call setup (oneDNN kernels, allocator growth) is not counted.

``--precision int8`` makes (b) the opt-in int8 path: the members are
installed with random weights, calibrated on the first video's faces (as
``manage.py calibrate_int8`` does; counted in ``optimized_setup_s``, not in the
per-video time) and loaded with ``precision="int8"``.

It also times each member alone on the crops of the first video under several
execution options, so the choice of the shipped one can be checked (``--int8``
adds static int8 ONNX Runtime to that sweep). Prints a
table and writes JSON with top level ``naive_s_per_video``,
``optimized_s_per_video``, ``peak_rss_mb``, ``stages`` and ``members``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ensemble.config import AnalysisConfig, FaceConfig  # noqa: E402
from ensemble.crops import crop_face  # noqa: E402
from ensemble.faces import INPUT_SIZE, FaceDetector, plan_views  # noqa: E402
from ensemble.media import MediaLimits, list_media, sample_indices, sniff  # noqa: E402
from ensemble.members import LoadedMember, load_member  # noqa: E402
from ensemble.pipeline import analyze, analyze_with_data  # noqa: E402
from ensemble.registry import REGISTRY  # noqa: E402
from ensemble.scoring import calibrate  # noqa: E402
from ensemble.tracks import link_tracks  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def own_peak_rss_mb() -> float:
    """Peak RSS of this process image only. ``ru_maxrss`` is not usable in a
    spawned child: Linux carries the parent's high-water mark over fork and
    exec, while ``VmHWM`` belongs to the current address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return peak_rss_mb()


# --- (a) the naive path ----------------------------------------------------------


def naive_decode(path: Path, n: int) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return [frames[i] for i in sample_indices(len(frames), n)]


def naive_detect(
    detector: FaceDetector, net_nchw: torch.nn.Module, frames: list[np.ndarray]
) -> list[Any]:
    from ensemble.blazeface import decode

    out = []
    for frame in frames:
        h, w = frame.shape[:2]
        tiles = []
        for v in plan_views(h, w):
            canvas = np.zeros((v.side, v.side, 3), np.uint8)
            region = frame[v.y0 : v.y0 + v.side, v.x0 : v.x0 + v.side]
            canvas[: region.shape[0], : region.shape[1]] = region
            tiles.append(cv2.resize(canvas, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA))
        x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float().contiguous() / 127.5 - 1
        with torch.no_grad():
            boxes, scores = net_nchw(x)
        out.append(decode(boxes, scores, detector.anchors, detector.config.min_score))
    return out


def run_naive(
    path: Path,
    cfg: AnalysisConfig,
    detector: FaceDetector,
    net_nchw: torch.nn.Module,
    members: dict[str, LoadedMember],
) -> dict[str, float]:
    t: dict[str, float] = {}
    start = time.perf_counter()
    frames = naive_decode(path, cfg.frames)
    t["decode"] = time.perf_counter() - start
    s = time.perf_counter()
    naive_detect(detector, net_nchw, frames)
    t["detect"] = time.perf_counter() - s
    # Same faces as the optimized path, so member work is equal; finding them
    # again is not part of the naive path's time.
    s = time.perf_counter()
    dets = detector.detect(frames)
    tracks = link_tracks(dets, cfg.faces.track_iou, cfg.faces.min_track_fraction)
    faces = [(pos, d) for tr in tracks for pos, d in tr.detections]
    untimed = time.perf_counter() - s
    for name, m in members.items():
        s = time.perf_counter()
        crops = [crop_face(frames[pos], d.box, m.crop, m.input_size) for pos, d in faces]
        with torch.no_grad():
            logits = [m.model(m.to_tensor([c])).item() for c in crops]
        calibrate(logits, m.temperature)
        t[f"member:{name}"] = time.perf_counter() - s
    t["total"] = time.perf_counter() - start - untimed
    return t


# --- member options -------------------------------------------------------------------


def time_call(fn: Any, repeat: int = 1) -> float:
    fn()  # warm-up (allocations, lazy init); not counted
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def member_options(
    spec_name: str,
    model: torch.nn.Module,
    crops: list[np.ndarray],
    member: LoadedMember,
    with_compile: bool,
    with_int8: bool = False,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    nchw = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    x_nchw = member.to_tensor(crops).contiguous()
    x_cl = x_nchw.contiguous(memory_format=torch.channels_last)
    cl = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)

    def guarded(name: str, fn: Any) -> None:
        try:
            results[name] = round(fn(), 3)
        except Exception as e:  # an option that does not work here is reported, not fatal
            results[name] = f"error: {type(e).__name__}: {e}"[:200]

    def eager_b1() -> float:
        def run() -> None:
            with torch.no_grad():
                for i in range(len(x_nchw)):
                    nchw(x_nchw[i : i + 1])

        return time_call(run)

    def batched(net: torch.nn.Module, x: torch.Tensor, mode: Any) -> float:
        def run() -> None:
            with mode():
                net(x)

        return time_call(run)

    guarded("eager_fp32_nchw_b1_no_grad", eager_b1)
    guarded("nchw_batched_no_grad", lambda: batched(nchw, x_nchw, torch.no_grad))
    guarded("nchw_batched_inference_mode", lambda: batched(nchw, x_nchw, torch.inference_mode))
    guarded("channels_last_batched_inference_mode", lambda: batched(cl, x_cl, torch.inference_mode))

    def traced() -> float:
        with torch.no_grad():
            frozen = torch.jit.freeze(torch.jit.trace(cl, x_cl[:2]))
        return batched(frozen, x_cl, torch.inference_mode)

    guarded("channels_last_trace_freeze", traced)

    if with_compile:

        def compiled() -> float:
            fn = torch.compile(cl)
            start = time.perf_counter()
            with torch.inference_mode():
                fn(x_cl)
            results["torch_compile_first_call_s"] = round(time.perf_counter() - start, 3)
            return batched(fn, x_cl, torch.inference_mode)

        guarded("channels_last_torch_compile", compiled)

    def onnx(threads: int) -> float:
        from ensemble.runtime import OnnxRunner

        runner = OnnxRunner.for_module(
            nchw, x_nchw[:2], tag=spec_name, weights_sha256=None, cache_dir=None, threads=threads
        )
        x = x_nchw.numpy()
        return time_call(lambda: runner(x))

    for threads in sorted({1, torch.get_num_threads()}):
        guarded(f"onnxruntime_fp32_{threads}_threads", lambda t=threads: onnx(t))
    if with_int8:
        threads = torch.get_num_threads()
        guarded(
            f"onnxruntime_int8_static_{threads}_threads",
            lambda: onnx_int8(spec_name, nchw, x_nchw, threads, results),
        )
    if torch.cuda.is_available():
        guarded("cuda_fp16_autocast", lambda: cuda_half(model, x_nchw))
    else:
        results["cuda_fp16_autocast"] = "not measured: no CUDA device on this machine"
    return results


def onnx_int8(
    tag: str, model: torch.nn.Module, x: torch.Tensor, threads: int, results: dict[str, Any]
) -> float:
    """ONNX Runtime with static int8 quantization (QDQ, per-channel int8
    weights, uint8 activations), calibrated on the first 8 of these crops.

    Not a shipped option: whether int8 keeps a member's accuracy can only be
    judged on trained weights, and these are random. The calibration time and
    the largest logit change against fp32 on these crops are recorded too."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from ensemble.runtime import OnnxRunner, export_onnx

    calibration = x[:8].numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"x": calibration[i : i + 4]} for i in range(0, 8, 4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared, int8 = (Path(tmp) / f"{tag}_{k}.onnx" for k in ("fp32", "pre", "int8"))
        export_onnx(model, x[:2], fp32, ["y"])
        start = time.perf_counter()
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
        results["int8_calibration_s"] = round(time.perf_counter() - start, 1)
        runner, reference = OnnxRunner(int8, threads), OnnxRunner(fp32, threads)
    xs = x.numpy()
    diff = np.abs(runner(xs)[0] - reference(xs)[0]).max()
    results["int8_max_abs_logit_change_random_weights"] = round(float(diff), 4)
    return time_call(lambda: runner(xs))


def cuda_half(model: torch.nn.Module, x: torch.Tensor) -> float:
    """fp16 autocast on CUDA, channels_last (only when a GPU is present)."""
    net = copy.deepcopy(model).cuda().eval().to(memory_format=torch.channels_last)
    xc = x.cuda().contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            net(xc)
        torch.cuda.synchronize()

    return time_call(run, repeat=5)


def optimized_child(
    video: str,
    names: list[str],
    frames: int,
    backend: str,
    threads: int,
    batch_size: int,
    int8: tuple[str, str] | None = None,
) -> dict[str, float]:
    """Runs in a fresh process: the shipped path alone, for its own peak RSS.
    ``int8`` is (weights folder, cache folder) of calibrated int8 members."""
    if threads:
        torch.set_num_threads(threads)
    cache = Path(tempfile.gettempdir()) / "trusttrace-bench-cache"
    cfg = AnalysisConfig(
        members=tuple(names),
        frames=frames,
        cache_dir=cache,
        limits=MediaLimits(),
        batch_size=batch_size,
    )
    detector = FaceDetector.load(FaceConfig(), cache)
    torch.manual_seed(0)
    if int8 is not None:
        members = {
            n: load_member(n, Path(int8[0]), backend="onnxruntime", cache_dir=Path(int8[1]),
                           precision="int8", threads=threads)
            for n in names
        }  # fmt: skip
    else:
        members = {
            n: random_member(REGISTRY.get(n).build().eval(), n, True, backend) for n in names
        }
    analyze(Path(video), cfg, members=members, detector=detector)
    result = analyze(Path(video), cfg, members=members, detector=detector)
    return {"total_s": result.timings["total"], "peak_rss_mb": own_peak_rss_mb()}


def int8_members(
    names: list[str], video: Path, cfg: AnalysisConfig, detector: FaceDetector, folder: Path
) -> tuple[dict[str, LoadedMember], dict[str, Any]]:
    """The random-init members installed in ``folder``, calibrated to int8
    on the faces of ``video`` (as ``manage.py calibrate_int8`` does)."""
    from bench.explain_cost import install_random_members
    from ensemble.quantize import calibrate_int8

    weights, cache = folder / "weights", folder / "cache"
    install_random_members(names, weights)
    fp32 = {n: load_member(n, weights, backend="onnxruntime", cache_dir=cache) for n in names}
    _, data = analyze_with_data(video, cfg, members=fp32, detector=detector)
    if data is None:
        sys.exit(f"no faces in {video} to calibrate int8 on")
    # every other face: enough to fix the ranges, half the calibration time
    reports = {n: calibrate_int8(fp32[n], data.crops[n][::2], cfg.batch_size) for n in names}
    members = {
        n: load_member(n, weights, backend="onnxruntime", cache_dir=cache, precision="int8")
        for n in names
    }
    info = {
        n: {"calibration_crops": r.crops, "calibration_s": round(r.seconds, 1),
            "max_abs_probability_change_random_weights": round(r.max_abs_change, 4)}
        for n, r in reports.items()
    }  # fmt: skip
    return members, info


def random_member(
    model: torch.nn.Module, name: str, channels_last: bool, backend: str = "torch"
) -> LoadedMember:
    """A member with its own copy of ``model`` (the real architecture, random weights)."""
    spec = REGISTRY.get(name)
    return LoadedMember(
        spec=spec,
        model=copy.deepcopy(model),
        input_size=spec.input_size,
        mean=spec.mean,
        std=spec.std,
        channels_last=channels_last,
        backend=backend,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=Path, default=ROOT.parent / "shared" / "media" / "videos")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--members", default=",".join(REGISTRY.names()))
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile (slow to compile)"
    )
    parser.add_argument(
        "--skip-options", action="store_true", help="skip the per-member option sweep"
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "int8"],
        help="precision of the optimized path: int8 calibrates the members on the first "
        "video's faces first (opt-in in the product: TRUSTTRACE_PRECISION=int8)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also time static int8 ONNX Runtime in the option sweep (minutes of calibration)",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime"],
        help="backend of the optimized path (the shipped default is auto)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also measure what explanations add (bench/explain_cost.py), as 'explain' in the JSON",
    )
    parser.add_argument(
        "--batch-size", type=int, default=AnalysisConfig.batch_size, help="crops per forward"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed runs of both paths on the first video before timing (first-call setup)",
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    videos = [p for p in list_media([args.videos]) if sniff(p).kind == "video"]
    if not videos:
        sys.exit(f"no videos in {args.videos}")
    names = [n.strip() for n in args.members.split(",") if n.strip()]
    cache = Path(tempfile.gettempdir()) / "trusttrace-bench-cache"
    cfg = AnalysisConfig(
        members=tuple(names),
        frames=args.frames,
        cache_dir=cache,
        limits=MediaLimits(),
        batch_size=args.batch_size,
    )
    detector = FaceDetector.load(FaceConfig(), cache)
    net_nchw = copy.deepcopy(detector.net).to(memory_format=torch.contiguous_format)

    torch.manual_seed(0)
    models = {n: REGISTRY.get(n).build().eval() for n in names}
    naive_members = {n: random_member(m, n, channels_last=False) for n, m in models.items()}
    setup_start = time.perf_counter()
    int8_dir = tempfile.TemporaryDirectory(prefix="trusttrace-bench-int8-")
    int8_info: dict[str, Any] | None = None
    if args.precision == "int8":
        fast_members, int8_info = int8_members(names, videos[0], cfg, detector, Path(int8_dir.name))
    else:
        fast_members = {
            n: random_member(m, n, channels_last=True, backend=args.backend)
            for n, m in models.items()
        }
    # ONNX export (and int8 calibration), once per weights version in a worker
    setup_s = time.perf_counter() - setup_start
    for _ in range(args.warmup):
        run_naive(videos[0], cfg, detector, net_nchw, naive_members)
        analyze(videos[0], cfg, members=fast_members, detector=detector)

    per_video = []
    for path in videos:
        naive = run_naive(path, cfg, detector, net_nchw, naive_members)
        result = analyze(path, cfg, members=fast_members, detector=detector)
        info = result.media
        per_video.append(
            {
                "file": path.name,
                "resolution": f"{info.width}x{info.height}" if info else None,
                "duration_s": info.duration_s if info else None,
                "faces": len(result.faces),
                "naive": {k: round(v, 3) for k, v in naive.items()},
                "optimized": {k: round(v, 3) for k, v in result.timings.items()},
            }
        )
        print(
            f"{path.name}: naive {naive['total']:.2f} s, "
            f"optimized {result.timings['total']:.2f} s ({len(result.faces)} faces)",
            flush=True,
        )

    def mean_stage(kind: str) -> dict[str, float]:
        keys = per_video[0][kind].keys()
        return {k: round(float(np.mean([v[kind].get(k, 0.0) for v in per_video])), 3) for k in keys}

    members: dict[str, Any] = {}
    if not args.skip_options:
        first = videos[0]
        frames = naive_decode(first, args.frames)
        dets = detector.detect(frames)
        tracks = link_tracks(dets, cfg.faces.track_iou, cfg.faces.min_track_fraction)
        faces = [(pos, d) for tr in tracks for pos, d in tr.detections]
        for n in names:
            m = fast_members[n]
            crops = [crop_face(frames[pos], d.box, m.crop, m.input_size) for pos, d in faces]
            if not crops:
                continue
            members[n] = {
                "input_size": m.input_size,
                "crops": len(crops),
                "video": first.name,
                **member_options(n, models[n], crops, m, args.compile, args.int8),
            }
            print(f"{n}: {members[n]}", flush=True)

    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child = pool.apply(
            optimized_child,
            (
                str(videos[0]), names, args.frames, args.backend, args.threads, args.batch_size,
                (str(Path(int8_dir.name) / "weights"), str(Path(int8_dir.name) / "cache"))
                if args.precision == "int8" else None,
            ),
        )  # fmt: skip
    int8_dir.cleanup()
    print(f"optimized path alone in a fresh process: {child}", flush=True)

    explain: dict[str, Any] | None = None
    if args.explain:
        from bench.explain_cost import measure

        explain = measure(videos, frames=args.frames, members=names, threads=args.threads)
        print(f"explanations: {json.dumps(explain)[:400]}", flush=True)

    report = {
        "naive_s_per_video": round(float(np.mean([v["naive"]["total"] for v in per_video])), 3),
        "optimized_s_per_video": round(
            float(np.mean([v["optimized"]["total"] for v in per_video])), 3
        ),
        # This process holds both paths' models and the option sweep's copies.
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # The shipped path alone, as a worker runs it (detector, members, one video).
        "optimized_peak_rss_mb": round(child["peak_rss_mb"], 1),
        "stages": {"naive": mean_stage("naive"), "optimized": mean_stage("optimized")},
        "members": members,
        "explain": explain,
        "videos": per_video,
        "frames": args.frames,
        "batch_size": args.batch_size,
        "backend": {n: m.backend for n, m in fast_members.items()},
        "precision": args.precision,
        "int8_calibration": int8_info,
        "input_size": {n: m.input_size for n, m in fast_members.items()},
        "optimized_setup_s": round(setup_s, 3),
        "warmup_runs": args.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform()},
    }
    speedup = report["naive_s_per_video"] / max(report["optimized_s_per_video"], 1e-9)
    print(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "naive_s_per_video",
                    "optimized_s_per_video",
                    "peak_rss_mb",
                    "optimized_peak_rss_mb",
                    "stages",
                )
            },
            indent=2,
        )
    )
    print(f"speed-up: {speedup:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
