"""Labels and annotations glowplug puts on what it renders, read by operator and activator.

``SERVICE_LABEL`` is on each engine pod, Deployment and Service; the EndpointSlice
controller copies Service labels onto the Service's slices, so the activator finds a
service's slices and pods, and the operator its pods, by this one label.
"""

from __future__ import annotations

SERVICE_LABEL = "glowplug.dev/service"
MANAGED_BY = "glowplug"  # app.kubernetes.io/managed-by
TEMPLATE_HASH_ANNOTATION = "glowplug.dev/template-hash"
ENGINE_PORT_ANNOTATION = "glowplug.dev/engine-port"
