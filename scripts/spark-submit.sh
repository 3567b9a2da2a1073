#!/usr/bin/env bash
# Submit jobs/run_pipeline.py with spark-submit, Delta Lake enabled and the
# anomaly_spark package shipped to the executors as build/anomaly_spark.zip.
set -euo pipefail

DELTA_PACKAGE="io.delta:delta-spark_2.13:4.0.1"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
job_file="${repo_root}/jobs/run_pipeline.py"
package_dir="${repo_root}/anomaly_spark"
zip_file="${repo_root}/build/anomaly_spark.zip"

usage() {
    cat <<'EOF'
Usage: scripts/spark-submit.sh [--master URL] [JOB OPTIONS...]

Submit jobs/run_pipeline.py with spark-submit. The anomaly_spark package is
zipped into build/anomaly_spark.zip and shipped with --py-files, and the Delta
Lake package and SQL extension are added.

Options read by this script:
  --master URL   Spark master URL (default: local[*]). It is passed to
                 spark-submit and to the job.
  -h, --help     Print this help and exit.
  --             Pass all later arguments to the job unread, for example
                 "-- --help" for the job's own help.

Every other argument goes to the job unchanged. The job takes the options of
"anomaly-spark run":
  --config FILE  --source PATH_OR_URL  --format auto|csv|json|parquet|delta
  --records-path DOTTED.PATH  --mode simple|complex  --output DIR
  --label-column COL  --run-id ID  --plots/--no-plots  --set KEY=VALUE

Environment:
  SPARK_SUBMIT      spark-submit to run (default: bin/spark-submit of the
                    installed pyspark package)
  DRIVER_MEMORY     --driver-memory, for example 4g
  EXECUTOR_MEMORY   --executor-memory, for example 8g
  EXTRA_SPARK_CONF  space-separated KEY=VALUE Spark settings, each passed as
                    --conf KEY=VALUE
  PYSPARK_PYTHON    Python of the driver and executors (default: .venv/bin/python
                    when it exists)

Example:
  scripts/spark-submit.sh --master 'local[4]' --source data/input.csv --output ./output
EOF
}

die() {
    echo "error: $*" >&2
    exit 2
}

# Options of the job that take a value. Their values are copied unread, so a
# value such as "--set note=-h" does not trigger this script's help.
takes_value() {
    case "$1" in
        --config | --source | --format | --records-path | --mode | --output | \
            --label-column | --run-id | --set)
            return 0
            ;;
    esac
    return 1
}

master="local[*]"
job_args=()
while (($# > 0)); do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --master)
            (($# >= 2)) || die "--master requires a URL, for example --master 'local[*]'"
            master="$2"
            shift 2
            ;;
        --master=*)
            master="${1#--master=}"
            shift
            ;;
        --)
            shift
            job_args+=("$@")
            break
            ;;
        *)
            if takes_value "$1" && (($# >= 2)); then
                job_args+=("$1" "$2")
                shift 2
            else
                job_args+=("$1")
                shift
            fi
            ;;
    esac
done
[[ -n "${master}" ]] || die "--master must not be empty"

[[ -f "${job_file}" ]] || die "job file not found: ${job_file}"
[[ -d "${package_dir}" ]] || die "package directory not found: ${package_dir}"

if [[ -x "${repo_root}/.venv/bin/python" ]]; then
    python_bin="${repo_root}/.venv/bin/python"
    export PYSPARK_PYTHON="${PYSPARK_PYTHON:-${python_bin}}"
else
    python_bin="$(command -v python3 || true)"
    [[ -n "${python_bin}" ]] || die "python3 not found. Create .venv or put python3 on PATH."
fi

if [[ -z "${SPARK_SUBMIT:-}" ]]; then
    pyspark_dir="$("${python_bin}" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')" ||
        die "pyspark cannot be imported by ${python_bin}. Install the project (pip install -e .) or set SPARK_SUBMIT."
    SPARK_SUBMIT="${pyspark_dir}/bin/spark-submit"
fi
[[ -x "${SPARK_SUBMIT}" ]] || die "spark-submit not found or not executable: ${SPARK_SUBMIT}"

# Zip the package without bytecode caches, with paths relative to the repository
# root, so that "import anomaly_spark" works from the zip on every executor.
mkdir -p "$(dirname "${zip_file}")"
"${python_bin}" - "${repo_root}" "${zip_file}" <<'PY'
import os
import sys
import zipfile

root, target = sys.argv[1], sys.argv[2]
tmp = target + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
    for folder, subfolders, files in os.walk(os.path.join(root, "anomaly_spark")):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(folder, name)
            archive.write(path, os.path.relpath(path, root))
os.replace(tmp, target)
PY

submit_args=(
    --master "${master}"
    --name anomaly-spark
    --packages "${DELTA_PACKAGE}"
    --conf "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension"
    --conf "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog"
    --py-files "${zip_file}"
)
if [[ -n "${DRIVER_MEMORY:-}" ]]; then
    submit_args+=(--driver-memory "${DRIVER_MEMORY}")
fi
if [[ -n "${EXECUTOR_MEMORY:-}" ]]; then
    submit_args+=(--executor-memory "${EXECUTOR_MEMORY}")
fi
if [[ -n "${EXTRA_SPARK_CONF:-}" ]]; then
    read -r -a extra_confs <<<"${EXTRA_SPARK_CONF}"
    for setting in "${extra_confs[@]}"; do
        [[ "${setting}" == ?*=* ]] || die "invalid EXTRA_SPARK_CONF entry '${setting}': expected KEY=VALUE"
        submit_args+=(--conf "${setting}")
    done
fi

exec "${SPARK_SUBMIT}" "${submit_args[@]}" "${job_file}" --master "${master}" "${job_args[@]+"${job_args[@]}"}"
