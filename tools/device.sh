#!/usr/bin/env bash
# Run lmstack on the lent GPU machine (torch, triton, transformers there; not our packages, not pydantic/fastapi/...).
#   here:   tools/device.sh fetch        download the missing wheels for the device's CPython 3.12 into .whl/
#   there:  source tools/device.sh env   install .whl/ into /tmp/site and put packages/*/src on PYTHONPATH
# Device commands start with `source tools/device.sh env &&` and name `.whl` in carry.
WHEELS="pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
fastapi==0.163.2 starlette opentelemetry-api annotated-doc uvicorn==0.54.0 cryptography cffi pycparser datasketch==2.0.0
license-expression boolean.py peft==0.21.0 accelerate psutil trl==1.13.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
jsonschema jsonschema-specifications referencing rpds-py attrs python-stdnum xgrammar==0.2.8 apache-tvm-ffi
bitsandbytes==0.50.2"
case "${1:-}" in
  fetch)
    cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    for w in $WHEELS; do
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_34_x86_64 --platform manylinux_2_24_x86_64 --platform any -d .whl "$w" \
        || echo "could not fetch $w" >&2
    done
    ls .whl ;;
  env)
    _root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if ls "$_root"/.whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$_root"/.whl/*.whl || return 1
    fi
    # Entry points (the plugin resolver reads them from installed metadata): a .dist-info per package in /tmp/site.
    python3 - "$_root" <<'PY' || return 1
import pathlib, sys, tomllib
root, site = pathlib.Path(sys.argv[1]), pathlib.Path("/tmp/site")
for pp in sorted(root.glob("packages/*/pyproject.toml")):
    proj = tomllib.loads(pp.read_text())["project"]
    info = site / f"{proj['name'].replace('-', '_')}-{proj['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {proj['name']}\nVersion: {proj['version']}\n")
    eps = proj.get("entry-points", {})
    (info / "entry_points.txt").write_text("".join(
        f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in m.items()) + "\n" for g, m in eps.items()))
PY
    _pp=/tmp/site
    for d in "$_root"/packages/*/src; do _pp="$_pp:$d"; done
    export PYTHONPATH="$_pp${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 ;;
  *) sed -n '2,5p' "${BASH_SOURCE[0]}"; return 2 2>/dev/null || exit 2 ;;
esac
