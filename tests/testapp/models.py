from django.db import models


class Run(models.Model):
    """One run of a test handler: which job, which attempt, which process, when."""

    key = models.CharField(max_length=100)
    job_id = models.BigIntegerField()
    attempt = models.PositiveIntegerField()
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"{self.key} job {self.job_id} attempt {self.attempt}"
