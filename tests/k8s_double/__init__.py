"""A test double of the Kubernetes API server (Deployments, ReplicaSets, Pods, Namespaces).

No API server can run on the machines of this project, so the backend and the real kubectl are
tested against this: an HTTP server on 127.0.0.1 with the deployment and replicaset controllers
and a kubelet that starts no containers. It is a double, faithful for the parts it implements
(docs/kubernetes.md lists what it does not model).

    with KubeDouble() as k8s:
        k8s.create_namespace("aads")
        k8s.create("deployments", deployment)
        k8s.write_kubeconfig(tmp / "kubeconfig")
"""

from tests.k8s_double.server import KubeDouble

__all__ = ["KubeDouble"]
