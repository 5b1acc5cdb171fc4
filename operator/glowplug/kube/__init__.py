"""What the operator and the activator share about the cluster (DESIGN.md section 1).

The API client with its timeouts (client.py), outage logging, informers (list+watch
caches), the scale compare-and-swap, labels, the pod-state classifier and the ``/stats``
contract. Both towers import this package; neither imports
the other.
"""
