"""A weights version records the member's calibration bias beside its
temperature (``sigmoid(logit / temperature + bias)``); rows from before read
as bias 0, the calibration every member had then."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("analyses", "0005_submission_reference_size_bytes"),
    ]

    operations = [
        migrations.AddField(
            model_name="weightsversion",
            name="bias",
            field=models.FloatField(default=0.0, db_default=0.0),
        ),
    ]
