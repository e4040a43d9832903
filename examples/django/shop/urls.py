from django.urls import path

from . import views

urlpatterns = [
    path("widgets/", views.order_widget),
    path("widgets/batch/", views.order_batch),
    path("widgets/<int:widget_id>/", views.widget_status),
    path("webhooks/payment/", views.payment_webhook),
]
