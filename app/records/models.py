from django.db import models
from django.urls import reverse


class Record(models.Model):
    title = models.CharField(max_length=200)
    body = models.TextField()
    attachment = models.FileField(upload_to="attachments/%Y/%m/", blank=True)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("records:detail", args=[self.pk])

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.pk,
            "title": self.title,
            "body": self.body,
            "attachment": self.attachment.url if self.attachment else None,
            "created": self.created.isoformat(),
            "updated": self.updated.isoformat(),
            "url": reverse("records:api-detail", args=[self.pk]),
        }
