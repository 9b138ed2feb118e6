"""Decisions outlive their submission: the foreign key becomes SET_NULL and
the submission's id and file hash are copied onto each decision."""

from django.db import migrations, models
from django.db.models import F, OuterRef, Subquery


def refuse_to_drop_kept_decisions(apps, schema_editor):
    """Going back would need every decision to have its submission again:
    refused while decisions of deleted submissions exist (the audit log is
    not deleted to make a migration pass)."""
    Decision = apps.get_model("moderation", "Decision")
    orphans = Decision.objects.filter(submission__isnull=True).count()
    if orphans:
        raise RuntimeError(
            f"{orphans} decision(s) belong to deleted submissions; reverting to 0002 would "
            "need them deleted. Export them (the admin lists submission_key) and delete "
            "them first if that is really wanted."
        )


def copy_submission_keys(apps, schema_editor):
    Decision = apps.get_model("moderation", "Decision")
    Submission = apps.get_model("analyses", "Submission")
    sha = Submission.objects.filter(pk=OuterRef("submission_id")).values("sha256")[:1]
    Decision.objects.update(submission_key=F("submission_id"), submission_sha256=Subquery(sha))


class Migration(migrations.Migration):
    dependencies = [
        ("moderation", "0002_decision_analysis_finished"),
        ("analyses", "0004_submission_provenance"),
    ]

    operations = [
        migrations.AddField(
            model_name="decision",
            name="submission_key",
            field=models.UUIDField(db_index=True, null=True),
        ),
        migrations.AddField(
            model_name="decision",
            name="submission_sha256",
            field=models.CharField(blank=True, default="", max_length=64),
            preserve_default=False,
        ),
        migrations.RunPython(copy_submission_keys, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="decision",
            name="submission_key",
            field=models.UUIDField(db_index=True),
        ),
        migrations.AlterField(
            model_name="decision",
            name="submission",
            field=models.ForeignKey(
                null=True,
                on_delete=models.deletion.SET_NULL,
                related_name="decisions",
                to="analyses.submission",
            ),
        ),
        # Runs first when the migration is reversed.
        migrations.RunPython(migrations.RunPython.noop, refuse_to_drop_kept_decisions),
    ]
