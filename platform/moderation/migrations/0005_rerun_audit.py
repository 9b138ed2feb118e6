"""Moderators' re-runs are kept in the audit log (who, when, and what the
replaced analysis said)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('analyses', '0006_weightsversion_bias'),
        ('moderation', '0004_decisions_in_insertion_order'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='Rerun',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('submission_key', models.UUIDField(db_index=True)),
                ('created', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('previous_status', models.CharField(max_length=16)),
                ('previous_verdict', models.CharField(blank=True, max_length=16)),
                ('previous_score', models.FloatField(blank=True, null=True)),
                ('previous_finished', models.DateTimeField(blank=True, null=True)),
                ('previous_model_versions', models.JSONField(blank=True, default=dict)),
                ('moderator', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='reruns', to=settings.AUTH_USER_MODEL)),
                ('submission', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='reruns', to='analyses.submission')),
            ],
            options={
                'ordering': ('-pk',),
            },
        ),
    ]
