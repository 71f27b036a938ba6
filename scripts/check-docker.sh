#!/usr/bin/env bash
# Static checks of the container files, for machines without a Docker engine:
#   - lints docker/Dockerfile with two npm linters (installed on first use into a cache outside
#     the repository): dockerfilelint 1.8.0 and dockerfile-utils 0.16.3 (the maintained linter of
#     the VS Code Docker language server, which knows current Dockerfile syntax);
#   - validates docker/docker-compose.yml with Debian's docker-compose (`config` needs no daemon),
#     including the required-key error;
#   - checks that the Dockerfile agrees with the repository: COPY sources exist and are not
#     excluded by .dockerignore, the CMake target/option/binary path it uses exist, its build
#     packages cover CMakeLists.txt's pkg-config modules and match scripts/install-deps.sh, its
#     runtime packages exist and cover the libraries a built binary needs.
#
#   scripts/check-docker.sh            the checks above
#   scripts/check-docker.sh --build    also runs the Dockerfile's cmake build on a copy of exactly
#                                      what the Dockerfile COPYs (catches missing COPY lines and
#                                      Release-only warnings); JOBS=2 by default
#
# Needs: node and npm, docker-compose, python3 with python3-yaml, pkg-config, dpkg/apt-cache.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)

build=0
for arg in "$@"; do
    case $arg in
    --build) build=1 ;;
    -h | --help)
        sed -n '2,18p' "$0"
        exit 0
        ;;
    *)
        echo "usage: $0 [--build]" >&2
        exit 2
        ;;
    esac
done

dockerfile=docker/Dockerfile
compose=docker/docker-compose.yml
npm_prefix=${IOTM_NPM_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/iot-manager/npm}
linters=(dockerfilelint@1.8.0 dockerfile-utils@0.16.3)

passed=0
failed=0
step() { printf '\n==> %s\n' "$*"; }
ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$*"; }
work=$(mktemp -d "${TMPDIR:-/tmp}/check-docker.XXXXXX")
trap 'rm -rf "$work"' EXIT
# counted CMD...: runs a checker that prints "ok ..." / "FAIL ..." lines and adds them up; a
# checker that fails without printing a FAIL line counts as one failure.
counted() {
    local rc n_ok n_fail
    "$@" >"$work/out" 2>&1
    rc=$?
    cat "$work/out"
    n_ok=$(grep -c '^ok ' "$work/out")
    n_fail=$(grep -c '^FAIL ' "$work/out")
    passed=$((passed + n_ok))
    failed=$((failed + n_fail))
    if [ "$rc" != 0 ] && [ "$n_fail" = 0 ]; then failed=$((failed + 1)); fi
}

for f in "$dockerfile" "$compose" .dockerignore CMakeLists.txt scripts/install-deps.sh; do
    [ -f "$f" ] || { bad "$f is missing"; }
done
[ "$failed" = 0 ] || { echo "$passed passed, $failed failed"; exit 1; }

# ---- linters ---------------------------------------------------------------------------------
step "Dockerfile linters (npm, cached in $npm_prefix)"
missing=()
for spec in "${linters[@]}"; do
    name=${spec%@*}
    want=${spec##*@}
    have=$(node -e "try{console.log(require('$npm_prefix/node_modules/$name/package.json').version)}catch(e){}" 2>/dev/null)
    [ "$have" = "$want" ] || missing+=("$spec")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v npm >/dev/null 2>&1; then
        bad "npm is not installed (apt-get install npm, or nodejs from NodeSource)"
    else
        echo "installing ${missing[*]}"
        mkdir -p "$npm_prefix"
        if ! (cd /tmp && npm install --prefix "$npm_prefix" --no-audit --no-fund --loglevel=error \
            "${missing[@]}" >/dev/null); then
            bad "npm install ${missing[*]} failed"
        fi
    fi
fi

if [ -x "$npm_prefix/node_modules/.bin/dockerfilelint" ]; then
    # dockerfilelint 1.8.0 reads HEALTHCHECK options with /--\w+/, so `--start-period` becomes
    # `--start` and is reported as an invalid argument; that one report is waived when every
    # option on the line is one Docker documents.
    json=$("$npm_prefix/node_modules/.bin/dockerfilelint" -o json "$dockerfile" 2>&1)
    if report=$(python3 - "$json" <<'PY'
import json, re, sys
try:
    data = json.loads(sys.argv[1])
except ValueError:
    print(sys.argv[1]); sys.exit(1)
allowed = {"--interval", "--timeout", "--start-period", "--start-interval", "--retries"}
bad = 0
for f in data.get("files", []):
    for i in f.get("issues", []):
        line = i.get("content", "")
        opts = re.findall(r"(--[a-z-]+)=\S+", line)
        if (i.get("title") == "Invalid Argument Format" and line.startswith("HEALTHCHECK")
                and opts and set(opts) <= allowed):
            print("      waived (dockerfilelint bug): line %s: %s" % (i["line"], line.strip(" \\")))
            continue
        bad += 1
        print("      line %s: %s: %s" % (i.get("line"), i.get("title"), line))
sys.exit(1 if bad else 0)
PY
    ); then
        [ -n "$report" ] && echo "$report"
        ok "dockerfilelint $dockerfile"
    else
        echo "$report"
        bad "dockerfilelint $dockerfile"
    fi
else
    bad "dockerfilelint is not available in $npm_prefix"
fi

if [ -x "$npm_prefix/node_modules/.bin/dockerfile-utils" ]; then
    if out=$("$npm_prefix/node_modules/.bin/dockerfile-utils" lint "$dockerfile" 2>&1); then
        ok "dockerfile-utils lint $dockerfile"
    else
        echo "$out"
        bad "dockerfile-utils lint $dockerfile"
    fi
else
    bad "dockerfile-utils is not available in $npm_prefix"
fi

# ---- compose ---------------------------------------------------------------------------------
step "docker-compose config ($compose)"
if ! command -v docker-compose >/dev/null 2>&1; then
    bad "docker-compose is not installed (apt-get install docker-compose)"
else
    # Without the key, compose must refuse with the message naming the variable.
    if out=$(env -u IOT_MANAGER_AES_ENCRYPTION_KEY docker-compose -f "$compose" config -q 2>&1); then
        bad "compose accepts a missing IOT_MANAGER_AES_ENCRYPTION_KEY"
    elif grep -q 'set IOT_MANAGER_AES_ENCRYPTION_KEY' <<<"$out"; then
        ok "missing IOT_MANAGER_AES_ENCRYPTION_KEY is refused with a message naming it"
    else
        echo "$out"
        bad "missing IOT_MANAGER_AES_ENCRYPTION_KEY: unexpected error"
    fi
    if resolved=$(IOT_MANAGER_AES_ENCRYPTION_KEY=dummy-key-for-config-check \
        docker-compose -f "$compose" config 2>"$work/compose.err"); then
        ok "docker-compose config accepts the file (dummy key)"
        printf '%s\n' "$resolved" >"$work/compose-resolved.yml"
        cat >"$work/compose_check.py" <<'PY'
import os, sys, yaml
doc = yaml.safe_load(open(sys.argv[1])); repo = os.path.realpath(sys.argv[2])
svc = doc.get("services", {})
res = []
def check(name, cond):
    res.append(cond); print(("ok    " if cond else "FAIL  ") + name)
check("services mender-mongo, nats, mender-iot-manager",
      {"mender-mongo", "nats", "mender-iot-manager"} <= set(svc))
m = svc.get("mender-iot-manager", {})
check("mender-iot-manager command is [server, --automigrate]",
      m.get("command") == ["server", "--automigrate"])
b = m.get("build", {})
check("mender-iot-manager builds docker/Dockerfile with the repository root as context",
      os.path.realpath(str(b.get("context", ""))) == repo and b.get("dockerfile") == "docker/Dockerfile")
env = m.get("environment", {})
check("IOT_MANAGER_MONGO_URL points at mender-mongo",
      str(env.get("IOT_MANAGER_MONGO_URL", "")).startswith("mongodb://mender-mongo"))
check("IOT_MANAGER_NATS_URI points at nats", str(env.get("IOT_MANAGER_NATS_URI", "")).startswith("nats://nats"))
check("IOT_MANAGER_AES_ENCRYPTION_KEY comes from the environment",
      env.get("IOT_MANAGER_AES_ENCRYPTION_KEY") == "dummy-key-for-config-check")
check("IOT_MANAGER_DOMAIN_WHITELIST is set", bool(env.get("IOT_MANAGER_DOMAIN_WHITELIST")))
check("mender-iot-manager depends on mender-mongo and nats",
      {"mender-mongo", "nats"} <= set(m.get("depends_on", {})))
hc = " ".join(map(str, m.get("healthcheck", {}).get("test", [])))
check("mender-iot-manager healthcheck probes /alive", "/api/internal/v1/iot-manager/alive" in hc)
ports = [str(p) for s in svc.values() for p in s.get("ports", [])]
check("published ports bind 127.0.0.1 only: %s" % ", ".join(ports),
      bool(ports) and all(p.startswith("127.0.0.1:") for p in ports))
check("nats runs with JetStream (-js)", "-js" in svc.get("nats", {}).get("command", []))
check("mongo and nats keep their data in volumes",
      bool(svc.get("mender-mongo", {}).get("volumes")) and bool(svc.get("nats", {}).get("volumes")))
sys.exit(0 if all(res) else 1)
PY
        counted python3 "$work/compose_check.py" "$work/compose-resolved.yml" "$repo"
    else
        cat "$work/compose.err"
        bad "docker-compose config rejects $compose"
    fi
fi

# ---- Dockerfile against the repository -------------------------------------------------------
step "Dockerfile consistency with the repository"
cat >"$work/dockerfile_check.py" <<'PY'
import os, re, shlex, shutil, subprocess, sys

dockerfile, binary = sys.argv[1], sys.argv[2]
results = []
def check(name, cond, detail=""):
    results.append(bool(cond))
    print(("ok    " if cond else "FAIL  ") + name + ("" if cond or not detail else ": " + detail))
def skip(name):
    print("skip  " + name)

# Instructions, with continuation lines joined and comments dropped.
instrs, cur = [], ""
for raw in open(dockerfile):
    line = raw.rstrip("\n")
    if not cur and line.lstrip().startswith("#"):
        continue
    if line.rstrip().endswith("\\"):
        cur += line.rstrip()[:-1] + " "
        continue
    cur += line
    if cur.strip():
        word, _, rest = cur.strip().partition(" ")
        instrs.append((word.upper(), rest.strip()))
    cur = ""

stages, stage = [], None
for word, rest in instrs:
    if word == "FROM":
        parts = rest.split()
        stage = {"image": parts[0], "name": parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None,
                 "instrs": [], "workdir": "/"}
        stages.append(stage)
    elif stage is not None:
        stage["instrs"].append((word, rest))
        if word == "WORKDIR":
            stage["workdir"] = os.path.join(stage["workdir"], rest)

check("two stages: debian:bookworm build, debian:bookworm-slim runtime",
      len(stages) == 2 and stages[0]["image"] == "debian:bookworm" and stages[1]["image"] == "debian:bookworm-slim",
      ", ".join(s["image"] for s in stages))
if len(stages) != 2:
    sys.exit(1)
build, runtime = stages

def apt_packages(stage):
    pkgs = []
    for word, rest in stage["instrs"]:
        if word == "RUN" and "apt-get" in rest and " install " in rest:
            seg = rest.split(" install ", 1)[1].split("&&")[0]
            pkgs += [t for t in seg.split() if not t.startswith("-")]
    return pkgs
build_pkgs, runtime_pkgs = apt_packages(build), apt_packages(runtime)

# .dockerignore, with Docker's matching close enough for this purpose: patterns relative to the
# context root, `**` across directories, a match on a directory excludes what is inside, the
# last matching pattern wins and `!` re-includes.
def ignore_patterns():
    pats = []
    for line in open(".dockerignore"):
        line = line.strip()
        if line and not line.startswith("#"):
            neg = line.startswith("!")
            p = line[1:] if neg else line
            p = os.path.normpath(p.lstrip("/"))
            rx = re.escape(p).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*") \
                .replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            pats.append((neg, re.compile("^" + rx + "$")))
    return pats
patterns = ignore_patterns()
def ignored(path):
    parts = os.path.normpath(path).split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    state = False
    for neg, rx in patterns:
        if any(rx.match(p) for p in prefixes):
            state = not neg
    return state

for sample in (".git/HEAD", "build/iot-manager", "build-asan/CMakeCache.txt", ".local/hub-policy-key",
               ".venv/bin/python", "tests/acceptance/__pycache__/x.pyc"):
    check(".dockerignore excludes %s" % sample, ignored(sample))

# COPY sources of the build stage: they exist and reach the context.
copies = []
for word, rest in build["instrs"]:
    if word == "COPY" and "--from" not in rest:
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        for src in args[:-1]:
            copies.append((src, args[-1]))
for src, dst in copies:
    if not os.path.exists(src):
        check("COPY source %s exists" % src, False)
        continue
    files = [src] if os.path.isfile(src) else [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs]
    dropped = [f for f in files if ignored(f) and re.search(r"\.(c|h|txt|cmake|in)$", f)]
    check("COPY source %s exists and is not excluded by .dockerignore (%d files)" % (src, len(files)),
          not dropped, ", ".join(dropped[:5]))
check("the build stage COPYs CMakeLists.txt", any(s == "CMakeLists.txt" for s, _ in copies))

# The cmake invocation, its target and options.
cmake_runs = [rest for word, rest in build["instrs"] if word == "RUN" and re.search(r"\bcmake (-S|--build)", rest)]
cmake = cmake_runs[0] if cmake_runs else ""
target = re.search(r"--target\s+(\S+)", cmake)
bdir = re.search(r"-B\s*(\S+)", cmake)
cml = open("CMakeLists.txt").read()
check("the build stage runs cmake with --target and -B", target and bdir, cmake)
tname = target.group(1) if target else "?"
check("CMake target %s exists (add_executable in CMakeLists.txt)" % tname,
      re.search(r"add_executable\(\s*%s\b" % re.escape(tname), cml))
for opt in re.findall(r"-D(\w+)=", cmake):
    if opt.startswith("CMAKE_"):
        continue
    check("cmake option %s exists in CMakeLists.txt" % opt, re.search(r"option\(\s*%s\b" % opt, cml))
check("Release build without tests (-DCMAKE_BUILD_TYPE=Release -DIOTM_BUILD_TESTS=OFF)",
      "-DCMAKE_BUILD_TYPE=Release" in cmake and "-DIOTM_BUILD_TESTS=OFF" in cmake)

built = os.path.normpath(os.path.join(build["workdir"], bdir.group(1) if bdir else "?", tname))
copy_from = [shlex.split(rest) for word, rest in runtime["instrs"] if word == "COPY" and "--from" in rest]
copied = [(a[-2], a[-1]) for a in copy_from if len(a) >= 3]
check("the runtime stage copies %s from the build stage" % built,
      any(os.path.normpath(s) == built for s, _ in copied), str(copied))
dest = copied[0][1] if copied else "?"
entry = [rest for word, rest in runtime["instrs"] if word == "ENTRYPOINT"]
cmd = [rest for word, rest in runtime["instrs"] if word == "CMD"]
check("ENTRYPOINT runs the copied binary %s" % dest, entry and entry[-1] == '["%s"]' % dest, str(entry))
check('CMD is ["server", "--automigrate"]', cmd and cmd[-1] == '["server", "--automigrate"]', str(cmd))

# User, volume, port, environment, healthcheck.
users = [rest for word, rest in runtime["instrs"] if word == "USER"]
uid = users[-1].split(":")[0] if users else "0"
check("runs as a fixed non-root uid (USER %s)" % (users[-1] if users else "-"), uid.isdigit() and uid != "0")
vols = " ".join(rest for word, rest in runtime["instrs"] if word == "VOLUME")
check("VOLUME /var/lib/iot-manager", "/var/lib/iot-manager" in vols)
envs = " ".join(rest for word, rest in runtime["instrs"] if word == "ENV")
listen = re.search(r"IOT_MANAGER_LISTEN=(\S+)", envs)
sqlite = re.search(r"IOT_MANAGER_SQLITE_PATH=(\S+)", envs)
check("ENV IOT_MANAGER_SQLITE_PATH lives in the volume",
      sqlite and sqlite.group(1).startswith("/var/lib/iot-manager/"))
port = listen.group(1).rsplit(":", 1)[-1] if listen else "?"
exposed = " ".join(rest for word, rest in runtime["instrs"] if word == "EXPOSE").split()
check("EXPOSE %s matches IOT_MANAGER_LISTEN" % port, port in exposed, str(exposed))
hc = " ".join(rest for word, rest in runtime["instrs"] if word == "HEALTHCHECK")
url = "http://127.0.0.1:%s/api/internal/v1/iot-manager/alive" % port
check("HEALTHCHECK probes %s" % url, url in hc, hc)
if os.path.exists("openapi/internal_v1.yaml"):
    check("/alive is part of the internal API (openapi/internal_v1.yaml)",
          "/alive" in open("openapi/internal_v1.yaml").read())
check("curl is installed for the HEALTHCHECK", "curl" in runtime_pkgs)
check("ca-certificates are installed (TLS to IoT Hub)", "ca-certificates" in runtime_pkgs)

# Build packages: each pkg-config module CMakeLists.txt requires outside the test-only block is
# provided by a package the build stage installs; and they agree with install-deps.sh.
main_part = cml.split("if(IOTM_BUILD_TESTS)")[0]
modules = [re.split(r"[<>=]", m)[0] for m in
           re.findall(r"pkg_check_modules\(\s*\w+\s+REQUIRED\s+(?:IMPORTED_TARGET\s+)?(\S+?)\s*\)", main_part)]
if shutil.which("pkg-config") and shutil.which("dpkg"):
    for mod in modules:
        pc = subprocess.run(["pkg-config", "--path", mod], capture_output=True, text=True).stdout.strip()
        owner = subprocess.run(["dpkg", "-S", pc], capture_output=True, text=True).stdout.split(":")[0] if pc else ""
        check("pkg-config module %s (package %s) is installed in the build stage" % (mod, owner or "?"),
              owner and owner in build_pkgs)
else:
    skip("pkg-config modules against build packages (needs pkg-config and dpkg)")
deps = open("scripts/install-deps.sh").read()
deps_list = re.search(r"packages=\((.*?)\)", deps, re.S)
deps_pkgs = deps_list.group(1).split() if deps_list else []
extra = [p for p in build_pkgs if p not in deps_pkgs]
check("build-stage packages are all in scripts/install-deps.sh", not extra, " ".join(extra))

# Runtime packages exist in Debian 12 (this machine's apt lists).
if shutil.which("apt-cache"):
    for p in runtime_pkgs:
        r = subprocess.run(["apt-cache", "show", "--no-all-versions", p], capture_output=True, text=True)
        check("runtime package %s exists" % p, r.returncode == 0 and "Package: " + p in r.stdout)
else:
    skip("runtime package names (needs apt-cache)")

# A built binary's libraries are all provided by the runtime packages.
if os.path.exists(binary) and shutil.which("readelf") and shutil.which("dpkg"):
    dyn = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True).stdout
    for lib in re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dyn):
        owner = subprocess.run(["dpkg", "-S", "*/" + lib], capture_output=True, text=True).stdout
        # several packages may ship a library of that name (libc6-i386 has libm.so.6 too):
        # take the one whose file is in the native multiarch directory
        lines = owner.splitlines()
        native = [l for l in lines if "/x86_64-linux-gnu/" in l or "/aarch64-linux-gnu/" in l]
        first = (native or lines or [""])[0]
        pkg = first.split(":")[0].strip() if first else ""
        if pkg in ("libc6", "libgcc-s1"):
            continue  # part of the base image
        check("%s needs %s (package %s): installed in the runtime stage" % (binary, lib, pkg or "?"),
              pkg and pkg in runtime_pkgs)
else:
    skip("libraries of a built binary (no %s; set IOT_MANAGER_BIN)" % binary)

# For --build: what to copy and what to run.
with open(sys.argv[3], "w") as plan:
    for src, dst in copies:
        plan.write("COPY\t%s\t%s\n" % (src, os.path.join(build["workdir"], dst) if not dst.startswith("/") else dst))
    plan.write("WORKDIR\t%s\nRUN\t%s\nBINARY\t%s\n" % (build["workdir"], cmake, built))
sys.exit(0 if all(results) else 1)
PY
counted python3 "$work/dockerfile_check.py" "$dockerfile" "${IOT_MANAGER_BIN:-build/iot-manager}" "$work/plan"

# ---- optional: the Dockerfile's build on exactly what it copies -----------------------------
if [ "$build" = 1 ]; then
    step "cmake build of exactly what the Dockerfile COPYs (--build)"
    if [ ! -s "$work/plan" ]; then
        bad "no build plan (the Dockerfile checks above could not parse the build stage)"
    else
        ctx=$work/ctx
        workdir=$(awk -F'\t' '$1 == "WORKDIR" {print $2}' "$work/plan")
        run=$(awk -F'\t' '$1 == "RUN" {print $2}' "$work/plan")
        binary=$(awk -F'\t' '$1 == "BINARY" {print $2}' "$work/plan")
        while IFS=$'\t' read -r kind src dst; do
            [ "$kind" = COPY ] || continue
            case $dst in */) dst=$dst${src##*/} ;; esac
            mkdir -p "$(dirname "$ctx$dst")"
            cp -a "$src" "$ctx$dst"
        done <"$work/plan"
        # Same command as the image, on this machine's cores budget.
        run=${run//\$(nproc)/${JOBS:-2}}
        echo "in $workdir: $run"
        if (cd "$ctx$workdir" && bash -c "$run") >"$work/build.log" 2>&1; then
            ok "the Dockerfile's cmake build succeeds on the COPYed files"
            if "$ctx$binary" version >/dev/null 2>&1; then
                ok "the built $binary runs (version)"
            else
                bad "the built $binary does not run"
            fi
        else
            tail -n 30 "$work/build.log"
            bad "the Dockerfile's cmake build fails on the COPYed files"
        fi
    fi
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
