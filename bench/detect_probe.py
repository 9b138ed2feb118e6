"""What probing the finest tiles saves: face detection with and without it.

    python -m bench.detect_probe --upscale --json var/bench/detect_probe.json

``FaceDetector.detect`` runs the finest pyramid tiles (half the frame's
short side, on frames of 800 rows or more) on every
``FINE_PROBE_EVERY``-th frame first, and on the others only when the probed
frames show a face the coarser views missed. This times, in one process and
alternating so that both see the same machine, the detector on the sampled
frames of each video with the probe (the shipped default) and with every
frame probed (``FINE_PROBE_EVERY = 1``: the whole pyramid on every frame, as
before the probe), and counts the views each ran and the frames whose faces
differ (a face without one of IoU >= 0.9 in the other).

``--upscale`` adds a copy of each video under 1080 rows, scaled to
1920x1080 with its faces scaled alike (written to a temporary folder): the
development clips at that size have large faces, the case the probe is for,
while the 1080p benchmark clip's face (about 110 pixels wide) is found only
by the finest tiles, the case where it must change nothing.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from ensemble import faces as face_module
from ensemble.blazeface import Detection, box_iou
from ensemble.config import FaceConfig, MediaLimits
from ensemble.media import RGBImage, load_media

DEFAULT_VIDEOS = [common.CLIP, common.VIDEOS / "cyshih704_real.mp4"]
SAME_FACE_IOU = 0.9


def upscaled_copy(src: Path, folder: Path, frames: int = 300) -> Path:
    """``src`` re-encoded at 1920x1080 (at most ``frames`` frames, H.264)."""
    import av
    import cv2

    dst = folder / f"{src.stem}_1080p.mp4"
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        enc = out.add_stream("libx264", rate=stream.average_rate)
        enc.width, enc.height, enc.pix_fmt = 1920, 1080, "yuv420p"
        enc.options = {"crf": "20", "preset": "veryfast"}
        for n, frame in enumerate(inp.decode(stream)):
            if n >= frames:
                break
            rgb = np.asarray(
                cv2.resize(
                    frame.to_ndarray(format="rgb24"), (1920, 1080), interpolation=cv2.INTER_CUBIC
                ),
                np.uint8,
            )
            out.mux(enc.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(enc.encode(None))
    return dst


def differing_frames(a: list[list[Detection]], b: list[list[Detection]]) -> int:
    def covered(faces: list[Detection], others: list[Detection]) -> bool:
        if not others:
            return not faces
        boxes = np.array([o.box for o in others], dtype=np.float64)
        return all(box_iou(np.array(f.box), boxes).max() >= SAME_FACE_IOU for f in faces)

    return sum(not (covered(x, y) and covered(y, x)) for x, y in zip(a, b, strict=True))


def measure(
    detector: face_module.FaceDetector, frames: list[RGBImage], repeats: int
) -> dict[str, Any]:
    views: dict[int, int] = {}
    seconds: dict[int, list[float]] = {1: [], face_module.FINE_PROBE_EVERY: []}
    found: dict[int, list[list[Detection]]] = {}
    run = detector._run
    shipped = face_module.FINE_PROBE_EVERY
    try:
        for repeat in range(repeats + 1):  # the first round warms up, untimed
            for every in seconds:
                face_module.FINE_PROBE_EVERY = every
                counted: list[int] = []

                def counting(batch: Any, counted: list[int] = counted) -> Any:
                    counted.append(len(batch))
                    return run(batch)

                detector._run = counting  # type: ignore[method-assign]
                start = time.perf_counter()
                found[every] = detector.detect(frames)
                took = time.perf_counter() - start
                detector._run = run  # type: ignore[method-assign]
                views[every] = sum(counted)
                if repeat:
                    seconds[every].append(took)
    finally:
        face_module.FINE_PROBE_EVERY = shipped
        detector._run = run  # type: ignore[method-assign]
    full, probed = seconds[1], seconds[shipped]
    return {
        "frame": list(frames[0].shape[:2]),
        "frames": len(frames),
        "faces_per_frame": statistics.median(len(f) for f in found[shipped]),
        "whole_pyramid": {"views": views[1], "median_s": round(statistics.median(full), 3)},
        "probe": {"views": views[shipped], "median_s": round(statistics.median(probed), 3)},
        "saved": round(1 - statistics.median(probed) / statistics.median(full), 3),
        "frames_with_other_faces": differing_frames(found[1], found[shipped]),
    }


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--videos", type=Path, nargs="+", default=DEFAULT_VIDEOS)
    p.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each way")
    p.add_argument("--upscale", action="store_true", help="also 1080p copies of smaller videos")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    detector = face_module.FaceDetector.load(FaceConfig(), common.ROOT / "var" / "cache")
    cpu_before = common.cpu_snapshot()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        videos = list(args.videos)
        for video in args.videos:
            first = load_media(video, MediaLimits(), 1).frames[0].image
            if args.upscale and first.shape[0] < 1080:
                videos.append(upscaled_copy(video, Path(tmp)))
        for video in videos:
            frames = [f.image for f in load_media(video, MediaLimits(), args.frames).frames]
            row = {"video": video.name, **measure(detector, frames, args.repeats)}
            rows.append(row)
            print(row, flush=True)
    report = {
        "fine_probe_every": face_module.FINE_PROBE_EVERY,
        "videos": rows,
        "cpu": {"before": cpu_before, "after": common.cpu_snapshot()},
    }
    print(f"CPU before: {cpu_before}")
    common.write_json(args.json, report)


if __name__ == "__main__":
    main()
