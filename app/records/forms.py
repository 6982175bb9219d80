from django import forms

from records.models import Record


class RecordForm(forms.ModelForm):
    class Meta:
        model = Record
        fields = ["title", "body", "attachment"]


def errors_as_dict(form: forms.BaseForm) -> dict[str, list[str]]:
    return {field: [e["message"] for e in errs] for field, errs in form.errors.get_json_data().items()}
