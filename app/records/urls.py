from django.urls import path

from records import api, exports, views

app_name = "records"

urlpatterns = [
    path("records/", views.record_list, name="list"),
    path("records/new/", views.record_create, name="create"),
    path("records/<int:pk>/", views.record_detail, name="detail"),
    path("api/records/", api.records, name="api-list"),
    path("api/records/<int:pk>/", api.record_detail, name="api-detail"),
    path("api/exports/", exports.create_export, name="export-create"),
    path("api/exports/<str:job_id>/", exports.export_status, name="export-status"),
    path("exports/<str:token>/", exports.export_download, name="export-download"),
]
