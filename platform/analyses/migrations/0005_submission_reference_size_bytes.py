"""A submission's reference file counts against its owner's storage quota:
its size is recorded at upload, and filled in here from the files on disk
for submissions stored before (0 where the file is gone)."""

from pathlib import Path

from django.conf import settings
from django.db import migrations, models


def fill_reference_sizes(apps, schema_editor):
    Submission = apps.get_model("analyses", "Submission")
    root = Path(settings.MEDIA_ROOT)
    for sub in Submission.objects.exclude(reference_file="").only("pk", "reference_file"):
        try:
            size = (root / sub.reference_file.name).stat().st_size
        except OSError:
            continue
        Submission.objects.filter(pk=sub.pk).update(reference_size_bytes=size)


class Migration(migrations.Migration):
    dependencies = [
        ("analyses", "0004_submission_provenance"),
    ]

    operations = [
        migrations.AddField(
            model_name="submission",
            name="reference_size_bytes",
            field=models.BigIntegerField(default=0, db_default=0),
        ),
        migrations.RunPython(fill_reference_sizes, migrations.RunPython.noop),
    ]
