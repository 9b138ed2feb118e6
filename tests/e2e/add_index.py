"""Run in the live stack's environment: give a finished submission an
explanation index (as the explainer will write it), so the browser test can
click the chart and see overlays. Until ``explain`` is merged the worker
itself stores no heatmaps."""

from __future__ import annotations

import json
import sys


def main() -> None:
    import django

    django.setup()
    from analyses import services
    from analyses.models import Submission
    from tests.platform.conftest import write_index

    sub = Submission.objects.get(pk=sys.argv[1])
    frames = tuple(sorted({int(r["frame"]) for r in sub.frame_rows}))
    out = services.artifact_dir(sub)
    index = write_index(out, frames)
    index["series"] = services.series_from_result(sub.result)  # the real scores
    (out / "index.json").write_text(json.dumps(index))
    services.load_index_file(sub, out)
    sys.stdout.write(f"{sub.artifacts.count()} artifacts for frames {frames}\n")


if __name__ == "__main__":
    main()
