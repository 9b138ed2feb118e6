"""A deleted submission takes its files with it, however it is deleted (the
owner's button, the API, the admin, or its owner's account being deleted);
so does an explanation's file deleted alone (in the admin)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from analyses.models import Artifact, Submission

logger = logging.getLogger(__name__)


@receiver(post_delete, sender=Submission, dispatch_uid="analyses.remove_submission_files")
def remove_submission_files(sender: type[Submission], instance: Submission, **kwargs: Any) -> None:
    """Remove the upload, the reference and the artifact folder of
    ``instance`` once the delete is committed: a delete that is rolled back
    (on Postgres, one that met a worker's rows at commit) keeps its files."""
    from analyses.services import artifact_dir

    paths = [Path(field.path) for field in (instance.file, instance.reference_file) if field]
    folder, pk = artifact_dir(instance), instance.pk

    def remove() -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("submission %s deleted with its files", pk)

    transaction.on_commit(remove, using=kwargs.get("using"))


@receiver(post_delete, sender=Artifact, dispatch_uid="analyses.remove_artifact_file")
def remove_artifact_file(sender: type[Artifact], instance: Artifact, **kwargs: Any) -> None:
    """Remove one explanation file once its row's delete is committed (the
    admin deletes one alone; a submission's delete removes its whole folder)."""
    if not instance.file:
        return
    name, path = instance.file.name, Path(instance.file.path)

    def remove() -> None:
        # Rows replaced by rows for the same files (an index loaded again)
        # keep them: only a file no row names any more goes.
        if not Artifact.objects.filter(file=name).exists():
            path.unlink(missing_ok=True)

    transaction.on_commit(remove, using=kwargs.get("using"))
