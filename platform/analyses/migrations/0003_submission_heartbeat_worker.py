from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("analyses", "0002_artifact_face_and_frame"),
    ]

    operations = [
        migrations.AddField(
            model_name="submission",
            name="heartbeat",
            field=models.DateTimeField(blank=True, db_index=True, null=True),
        ),
        migrations.AddField(
            model_name="submission",
            name="worker",
            field=models.CharField(blank=True, max_length=128),
        ),
    ]
