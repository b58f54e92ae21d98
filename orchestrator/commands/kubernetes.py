"""Kubernetes-only commands: `k8s-role`, the RBAC the orchestrator needs on a cluster."""

from __future__ import annotations

import json

import click
import yaml

from orchestrator.backends.kubernetes.api import VERBS, role
from orchestrator.options import json_option

HELP = """Print the ServiceAccount, Role and RoleBinding that let the orchestrator switch, roll back
and read status and history in one namespace: exactly the verbs it uses, nothing more.

\b
Verbs: """ + "; ".join(f"{r}: {', '.join(v)}" for r, v in VERBS.items()) + """
(no delete: ReplicaSets are never deleted, failed revisions are marked instead).

\b
orchestrator k8s-role -n aads | kubectl apply -f -

The same objects are in k8s/rbac/ (a test keeps them equal). Edit the RoleBinding's subjects
to bind the Role to the identity in the orchestrator's kubeconfig.
"""


@click.command("k8s-role", help=HELP)
@click.option("--namespace", "-n", default="aads", show_default=True, help="The target's namespace.")
@click.option("--name", default="aads-orchestrator", show_default=True,
              help="Name of the ServiceAccount, Role and RoleBinding.")
@json_option
def k8s_role_cmd(namespace: str, name: str, as_json: bool) -> None:
    objects = role(namespace, name)
    if as_json:
        click.echo(json.dumps(objects, indent=2))
    else:
        click.echo(yaml.safe_dump_all(objects, sort_keys=False), nl=False)


def register(cli: click.Group) -> None:
    cli.add_command(k8s_role_cmd)
