"""Run the double by hand: `python -m tests.k8s_double --kubeconfig /tmp/kc [--deployment FILE]`,
then `kubectl --kubeconfig /tmp/kc rollout history deployment/aads-serving`."""

from __future__ import annotations

import argparse
import signal
import threading

import yaml

from tests.k8s_double import KubeDouble


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--kubeconfig", required=True, help="where to write a kubeconfig for this double")
    ap.add_argument("--namespace", default="aads")
    ap.add_argument("--manifests", help="YAML (e.g. `kubectl kustomize k8s/overlays/cpu`): its Deployments are created")
    ap.add_argument("--bad-image", action="append", default=[], help="an image whose pods never become Ready")
    args = ap.parse_args()
    double = KubeDouble(port=args.port).start()
    double.create_namespace(args.namespace)
    if args.manifests:
        for doc in yaml.safe_load_all(open(args.manifests)):
            if doc and doc.get("kind") == "Deployment":
                doc["metadata"]["namespace"] = args.namespace
                double.create("deployments", doc)
    for image in args.bad_image:
        double.mark_bad(image)
    double.write_kubeconfig(args.kubeconfig, namespace=args.namespace)
    print(f"Kubernetes API double on {double.url}; kubeconfig {args.kubeconfig}; Ctrl-C stops it", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    double.stop()


if __name__ == "__main__":
    main()
