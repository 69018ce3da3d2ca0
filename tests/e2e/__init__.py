"""End-to-end tests on a real kube-apiserver (see envtest.py and conftest.py)."""
