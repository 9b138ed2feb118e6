"""What reading C2PA Content Credentials adds to the upload probe, per file.

    python -m bench.provenance_cost [PATH ...] [--images 20] [--repeats 3] \
        [--no-signed] [--json var/bench/provenance_cost.json]

The upload probe (``analyses/probe_child.py``) decodes one frame, sends its
answer, then reads and verifies the file's manifest store
(``ensemble.provenance.read_provenance``). This script repeats that in a child
process per file and run, forked from a parent that has imported
``ensemble.media`` and ``c2pa`` already (as the probe's forkserver has), and
measures in the child: the seconds of ``load_media`` (the probe as it was) and
of the manifest read, and the read's own peak memory: the peak resident size
(VmHWM) is reset after decoding (``/proc/self/clear_refs``), so the peak after
the read less the resident size before it is what the read needed on top.

Files: the PATHs given (files or folders), by default the upload corpus in
``../shared``: the development videos (``media/videos``) and the first
``--images`` images of ``datasets/gan_faces`` (real and fake). None of them
carries a manifest, which is the common case; unless ``--no-signed``, each is
also signed with a throwaway test certificate (``tests/c2pa_signing.py``) so a
present manifest, which the library validates by hashing the whole file, is
measured too. Medians are over the runs of a file, then over the files.

Other processes' CPU use is sampled before and after the timing (psutil) and
printed: on a busy machine the seconds are not worth much. Linux only (it
reads /proc).
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import c2pa

import ensemble.media as media
from bench import common
from ensemble.config import MediaLimits
from ensemble.provenance import library_version, read_provenance


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    return 0


def child(path: str, conn: Any) -> None:
    """One probe of ``path``: decode, then read the manifest; sends the figures."""
    try:
        t0 = time.perf_counter()
        loaded = media.load_media(Path(path), MediaLimits(), 1)
        t1 = time.perf_counter()
        fmt = loaded.info.format
        del loaded
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        rss_before = status_kb("VmRSS")
        t2 = time.perf_counter()
        summary = read_provenance(Path(path), fmt)
        t3 = time.perf_counter()
        conn.send(
            {
                "probe_s": t1 - t0,
                "c2pa_s": t3 - t2,
                "c2pa_peak_mb": max(0, status_kb("VmHWM") - rss_before) / 1024,
                "rss_before_mb": rss_before / 1024,
                "state": summary.state,
                "format": fmt,
            }
        )
    except Exception as e:
        conn.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        conn.close()


def measure(path: Path) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(str(path), send))
    proc.start()
    send.close()
    row: dict[str, Any] = receive.recv()
    proc.join()
    return row


def corpus(paths: list[Path], images: int) -> list[Path]:
    if paths:
        return media.list_media(paths)
    files = media.list_media([common.VIDEOS]) if common.VIDEOS.parent.is_dir() else []
    faces = common.SHARED / "datasets" / "gan_faces"
    for label in ("real", "fake"):
        folder = faces / label
        if folder.is_dir() and images:
            files += sorted(folder.iterdir())[: images // 2]
    if not files:
        raise SystemExit(f"no media: give PATHs, or put the shared folder at {common.SHARED}")
    return files


def signed_copies(files: list[Path], folder: Path) -> list[Path]:
    """Each file signed with a throwaway certificate (a created action)."""
    from tests.c2pa_signing import MIME, make_pki, sign

    pki = make_pki()
    out = []
    for i, path in enumerate(files):
        suffix = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else path.suffix.lower()
        if suffix not in MIME:
            continue
        src = folder / f"src{i}{suffix}"
        src.write_bytes(path.read_bytes())
        out.append(sign(src, folder / f"{path.stem}.signed{suffix}", pki))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument("paths", nargs="*", type=Path, help="files or folders (default: ../shared)")
    parser.add_argument("--images", type=int, default=20, help="gan_faces images (default 20)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-signed", action="store_true", help="skip the signed copies")
    args = parser.parse_args(argv)

    files = corpus(args.paths, args.images)
    with tempfile.TemporaryDirectory(prefix="provenance-cost-") as tmp:
        if not args.no_signed:
            files = files + signed_copies(files, Path(tmp))
        print(f"{library_version()}; {len(files)} files, {args.repeats} runs each", flush=True)
        cpu_before = common.cpu_snapshot()
        measure(files[0])  # warm the page cache and the library once, untimed
        rows = []
        for path in files:
            runs = [measure(path) for _ in range(args.repeats)]
            errors = [r["error"] for r in runs if "error" in r]
            if errors:
                print(f"{path.name}: {errors[0]}", flush=True)
                continue
            row = {
                "file": path.name,
                "bytes": path.stat().st_size,
                "format": runs[0]["format"],
                "state": runs[0]["state"],
                **{
                    k: statistics.median(r[k] for r in runs)
                    for k in ("probe_s", "c2pa_s", "c2pa_peak_mb", "rss_before_mb")
                },
            }
            rows.append(row)
            print(
                f"{row['file'][:44]:<44} {row['bytes'] / 2**20:7.2f} MB {row['format']:<5} "
                f"{row['state']:<9} probe {row['probe_s'] * 1000:8.1f} ms  "
                f"+c2pa {row['c2pa_s'] * 1000:7.1f} ms  +peak {row['c2pa_peak_mb']:6.1f} MB",
                flush=True,
            )
        cpu_after = common.cpu_snapshot()

    def medians(selected: list[dict[str, Any]]) -> dict[str, float]:
        return {
            k: statistics.median(r[k] for r in selected)
            for k in ("probe_s", "c2pa_s", "c2pa_peak_mb")
        }

    groups = {
        "all": rows,
        "without a manifest": [r for r in rows if r["state"] == "absent"],
        "with a manifest": [r for r in rows if r["state"] != "absent"],
    }
    summary = {name: medians(g) | {"files": len(g)} for name, g in groups.items() if g}
    print()
    for name, m in summary.items():
        share = m["c2pa_s"] / m["probe_s"] if m["probe_s"] else 0.0
        print(
            f"median over {m['files']} files {name}: the C2PA read adds "
            f"{m['c2pa_s'] * 1000:.1f} ms ({share:.0%} of the probe's "
            f"{m['probe_s'] * 1000:.0f} ms) and {m['c2pa_peak_mb']:.1f} MB of peak memory"
        )
    for when, cpu in (("before", cpu_before), ("after", cpu_after)):
        names = ", ".join(f"{b['name']} {b['cpu_percent']}%" for b in cpu["busy_processes"])
        print(
            f"other processes' CPU {when} timing: {cpu['other_processes_cpu_percent']}% "
            f"({'idle' if cpu['idle'] else 'NOT idle: ' + names}); load "
            f"{cpu['loadavg_1min']:.2f} on {cpu['cpu_count']} CPUs"
        )
    if args.json:
        report = {
            "library": library_version(),
            "c2pa_python": c2pa.__version__,
            "repeats": args.repeats,
            "files": rows,
            "medians": summary,
            "cpu": {"before": cpu_before, "after": cpu_after},
        }
        common.write_json(args.json, report)


if __name__ == "__main__":
    main()
