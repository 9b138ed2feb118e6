"""Speed benchmark: seconds per video on every backend, against the naive path.

    python -m bench.speed --videos ../shared/media/videos/aaronchong888_abofeumbvv.mp4 \
        --json var/bench/speed.json
    python -m bench.speed --table var/bench/speed.json   # the README's table

In one run, on the same clip, with random-init members of the real
architectures (speed does not depend on the weights):

(a) naive: every frame decoded and converted to RGB, then N picked; BlazeFace
    run frame by frame in NCHW with every tile resized on its own; each member
    run eagerly in fp32 NCHW, one crop at a time, under no_grad;
(b) ``ensemble.pipeline.Analyzer`` as a worker builds it (key-frame
    seeking, NONREF skipping, pyramid tiles, batches; the face detector on
    the members' backend) with the members on each backend and
    precision in turn (``--backends``): torch fp32, ONNX Runtime fp32,
    OpenVINO fp32 and bf16 (where the CPU has bf16 kernels). Each runs in a
    fresh process, as a worker does: the members are installed (random
    weights) and loaded with a cache folder, the first analysis after loading
    is timed as "cold", then ``--repeats`` warm ones; the process's own
    peak RSS is recorded. The shipped default (backend and precision
    "auto") is a second process on the same cache, so its cold time is a
    worker's first analysis after a restart, with the compiled models on
    disk; it also times an image (the clip's first frame
    with a face, as a PNG).

The naive path runs once untimed first (``--warmup``). Before timing, the
CPU use of every other process is sampled: the JSON says whether the CPU was
idle (``cpu.idle``), since two busy cores make every figure meaningless.

Also times each member alone on the crops of the clip under several
execution options (``--skip-options`` skips it); ``--int8`` adds ONNX Runtime
static int8 there, the quantized path the project shipped until OpenVINO
bf16 beat it (README, "Speed"). Writes JSON with top level
``naive``, ``backends``, ``default``, ``members`` and ``cpu``.
"""

from __future__ import annotations

import copy
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bench import common
from ensemble.config import DEFAULT_MIRROR, AnalysisConfig, FaceConfig
from ensemble.crops import crop_face
from ensemble.faces import INPUT_SIZE, FaceDetector, plan_views
from ensemble.media import MediaLimits, list_media, sample_indices, sniff
from ensemble.members import LoadedMember
from ensemble.pipeline import Analyzer
from ensemble.registry import REGISTRY
from ensemble.runtime import cpu_has_bf16
from ensemble.scoring import calibrate
from ensemble.tracks import link_tracks


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
        calibrate(logits, m.temperature, m.bias)
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

    def compiled_graph(backend: str, precision: str, threads: int) -> float:
        from ensemble.runtime import runner_for_module

        runner = runner_for_module(
            backend,
            nchw,
            x_nchw[:2],
            tag=spec_name,
            weights_sha256=None,  # type: ignore[arg-type]
            cache_dir=None,
            threads=threads,
            precision=precision,  # type: ignore[arg-type]
        )
        x = x_nchw.numpy()
        return time_call(lambda: runner(x))

    threads = torch.get_num_threads()
    for t in sorted({1, threads}):
        guarded(
            f"onnxruntime_fp32_{t}_threads", lambda t=t: compiled_graph("onnxruntime", "fp32", t)
        )
    guarded(f"openvino_fp32_{threads}_threads", lambda: compiled_graph("openvino", "fp32", threads))
    if cpu_has_bf16():
        guarded(
            f"openvino_bf16_{threads}_threads", lambda: compiled_graph("openvino", "bf16", threads)
        )
    if with_int8:
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
            str(prepared),
            str(int8),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
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


def cpu_snapshot(seconds: float = 2.0) -> dict[str, Any]:
    """Other processes' CPU use (:func:`bench.common.cpu_snapshot`) and whether
    this CPU computes bf16 natively."""
    return {**common.cpu_snapshot(seconds), "bf16_kernels": cpu_has_bf16()}


def backend_child(
    video: str,
    image: str | None,
    names: list[str],
    frames: int,
    backend: str,
    precision: str,
    threads: int,
    batch_size: int,
    weights: str,
    cache: str,
    repeats: int,
    mirror: tuple[str, ...] = DEFAULT_MIRROR,
) -> dict[str, Any]:
    """Runs in a fresh process, as a worker does: an ``Analyzer`` loads the
    face detector and the installed members on ``backend``/``precision``
    (ONNX export and compilation come from the cache when it has them), then
    times the first analysis (cold) and ``repeats`` warm ones."""
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    cfg = AnalysisConfig(
        members=tuple(names),
        frames=frames,
        cache_dir=Path(cache),
        limits=MediaLimits(),
        batch_size=batch_size,
        backend=backend,
        precision=precision,
        weights_dir=Path(weights),
        threads=threads,
        mirror=mirror,
    )
    analyzer = Analyzer(cfg)
    analyzer.prepare()
    members = analyzer.members
    load_s = time.perf_counter() - started
    first = analyzer.analyze(Path(video))
    warm = [analyzer.analyze(Path(video)) for _ in range(repeats)]
    best = min(warm, key=lambda r: r.timings["total"])
    out: dict[str, Any] = {
        "backend": next(iter(members.values())).backend,
        "detector_backend": analyzer.detector.backend,
        "precision": next(iter(members.values())).compute_precision,
        "load_s": round(load_s, 3),
        "cold_first_analysis_s": round(first.timings["total"], 3),
        "warm_s": round(best.timings["total"], 3),
        "warm_runs_s": [round(r.timings["total"], 3) for r in warm],
        "stages": {k: round(v, 3) for k, v in best.timings.items()},
        "faces": len(best.faces),
    }
    if image is not None:
        analyzer.analyze(Path(image))
        runs = [analyzer.analyze(Path(image)) for _ in range(3)]
        out["image_warm_s"] = round(min(r.timings["total"] for r in runs), 3)
    out["peak_rss_mb"] = round(own_peak_rss_mb(), 1)
    return out


def face_image(video: Path, detector: FaceDetector, frames: int, folder: Path) -> Path | None:
    """The first sampled frame of ``video`` with a face, as a PNG."""
    for frame in naive_decode(video, frames):
        if detector.detect([frame])[0]:
            path = folder / "frame.png"
            cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            return path
    return None


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


def table(report: dict[str, Any]) -> str:
    """The README's table, from a report written by this script."""
    naive = report["naive"]["total"]
    lines = [
        "| path | backend / precision (members, BlazeFace) | decode | detect | members "
        "| total (warm) | vs naive | cold first | image | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def members_s(stages: dict[str, float]) -> float:
        return sum(v for k, v in stages.items() if k.startswith("member:"))

    st = report["naive"]
    lines.append(
        f"| naive eager | torch fp32, 1 crop at a time | {st['decode']:.2f} | {st['detect']:.2f} "
        f"| {members_s(st):.2f} | {naive:.2f} s | 1.0x | | | |"
    )
    rows = [(f"{b['backend']} {b['precision']}", b, False) for b in report["backends"]]
    rows.append(("shipped default (auto)", report["default"], True))
    for label, b, is_default in rows:
        st = b["stages"]
        image = f"{b['image_warm_s']:.2f} s" if "image_warm_s" in b else ""
        name = f"**{label}**" if is_default else label
        runs = f"{b['backend']} {b['precision']}"
        if "detector_backend" in b:  # reports from before it was recorded ran torch
            runs += f", BlazeFace {b['detector_backend']}"
        lines.append(
            f"| {name} | {runs} | {st['decode']:.2f} | {st['detect']:.2f} "
            f"| {members_s(st):.2f} | {b['warm_s']:.2f} s | {naive / b['warm_s']:.1f}x "
            f"| {b['cold_first_analysis_s']:.2f} s | {image} | {b['peak_rss_mb'] / 1024:.2f} GB |"
        )
    cpu = report["cpu"]
    lines.append("")
    lines.append(
        f"{report['video']}, {report['frames']} frames, {report['faces']} faces, "
        f"{cpu['cpu_count']} cores, {report['threads']} threads; other processes' CPU before "
        f"timing: {cpu['other_processes_cpu_percent']}% ({'idle' if cpu['idle'] else 'NOT idle'})."
    )
    if "mirror" in report:  # reports from before it was recorded mirrored nothing
        mirrored = ", ".join(report["mirror"]) or "none"
        lines.append(f"Members that also scored each face mirrored (Analyzer rows): {mirrored}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    # --videos: the clip, or a folder whose first video is timed.
    common.add_analysis(parser, common.CLIP, REGISTRY.names())
    parser.add_argument("--table", type=Path, help="print the README table of a JSON report")
    parser.add_argument(
        "--backends",
        default="torch:fp32,onnxruntime:fp32,openvino:fp32,openvino:bf16",
        help="backend:precision pairs to time (bf16 is skipped where the CPU has no bf16 kernels)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="warm analyses per backend")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile (slow to compile)"
    )
    parser.add_argument(
        "--skip-options", action="store_true", help="skip the per-member option sweep"
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also time ONNX Runtime static int8 in the per-member option sweep",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also measure what explanations add (bench.explain_cost), as 'explain' in the JSON",
    )
    parser.add_argument(
        "--batch-size", type=int, default=AnalysisConfig.batch_size, help="crops per forward"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed runs of the naive path before timing it"
    )
    parser.add_argument(
        "--mirror",
        default=",".join(DEFAULT_MIRROR),
        help="members that also score each face mirrored in the Analyzer rows, as "
        "TRUSTTRACE_MIRROR (default: the shipped setting; '' for none)",
    )
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    videos = [p for p in list_media([args.videos]) if sniff(p).kind == "video"]
    if not videos:
        sys.exit(f"no videos in {args.videos}")
    video = videos[0]
    names = [n.strip() for n in args.members.split(",") if n.strip()]
    mirror = tuple(n.strip() for n in args.mirror.split(",") if n.strip())
    cpu = cpu_snapshot()
    print(f"CPU before timing: {cpu}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="trusttrace-bench-"))
    cache = work / "cache"
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
    for _ in range(args.warmup):
        run_naive(video, cfg, detector, net_nchw, naive_members)
    naive = {
        k: round(v, 3) for k, v in run_naive(video, cfg, detector, net_nchw, naive_members).items()
    }
    print(f"naive: {naive}", flush=True)
    del naive_members

    from bench.explain_cost import install_random_members

    weights = work / "weights"
    install_random_members(names, weights)
    image = face_image(video, detector, args.frames, work)
    pairs = [tuple(p.split(":")) for p in args.backends.split(",") if p]
    if not cpu["bf16_kernels"]:
        pairs = [p for p in pairs if p[1] != "bf16"]

    import multiprocessing

    def child(backend: str, precision: str, with_image: bool) -> dict[str, Any]:
        w, c = weights, cache
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            out: dict[str, Any] = pool.apply(
                backend_child,
                (
                    str(video),
                    str(image) if with_image and image else None,
                    names,
                    args.frames,
                    backend,
                    precision,
                    args.threads,
                    args.batch_size,
                    str(w),
                    str(c),
                    args.repeats,
                    mirror,
                ),
            )
        print(f"{backend} {precision}: {out}", flush=True)
        return out

    backends = [child(b, p, False) for b, p in pairs]
    # The shipped default, in a new process on the same cache: a worker restarted
    # after its models were compiled once.
    default = child("auto", "auto", True)

    members: dict[str, Any] = {}
    if not args.skip_options:
        frames = naive_decode(video, args.frames)
        dets = detector.detect(frames)
        tracks = link_tracks(dets, cfg.faces.track_iou, cfg.faces.min_track_fraction)
        faces = [(pos, d) for tr in tracks for pos, d in tr.detections]
        for n in names:
            m = random_member(models[n], n, channels_last=True)
            crops = [crop_face(frames[pos], d.box, m.crop, m.input_size) for pos, d in faces]
            if not crops:
                continue
            members[n] = {
                "input_size": m.input_size,
                "crops": len(crops),
                **member_options(n, models[n], crops, m, args.compile, args.int8),
            }
            print(f"{n}: {members[n]}", flush=True)

    explain: dict[str, Any] | None = None
    if args.explain:
        from bench.explain_cost import measure

        explain = measure(
            [video], frames=args.frames, members=names, threads=args.threads, mirror=mirror
        )
        print(f"explanations: {json.dumps(explain)[:400]}", flush=True)

    report = {
        "video": video.name,
        "frames": args.frames,
        "faces": default["faces"],
        "naive": naive,
        "backends": backends,
        "default": default,
        # The naive path scores each face once, mirrored members or not.
        "speedup_default_vs_naive": round(naive["total"] / max(default["warm_s"], 1e-9), 2),
        "members": members,
        "explain": explain,
        "batch_size": args.batch_size,
        "mirror": list(mirror),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cpu_after": cpu_snapshot(1.0),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
