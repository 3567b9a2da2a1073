# syntax=docker/dockerfile:1
#
# anomaly-spark image: Python 3.11, OpenJDK 17, the anomaly-spark package with
# pyspark, and the Delta Lake jars resolved at build time.
#
#   docker build -t anomaly-spark .
#   docker run --rm -v anomaly-output:/data/output anomaly-spark run --output /data/output
#
# The image runs as user spark (UID 185). A named volume takes the owner of
# /data/output from the image, and a bind-mounted host folder must be writable
# by UID 185.
#
# The same image runs the driver and executors of the Spark Operator chart in
# helm/anomaly-spark (see docker/entrypoint.sh).

# Debian 12 (bookworm) provides the openjdk-17 packages.
FROM python:3.11-slim-bookworm

ARG DELTA_PACKAGE=io.delta:delta-spark_2.13:4.0.1
ARG SPARK_UID=185

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The JRE's post-install step fails in slim images when the man folder is missing.
# tini reaps the JVM's child processes, procps provides "ps" for Spark's scripts,
# and libnss-wrapper gives an arbitrary UID a user name (see docker/entrypoint.sh).
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        openjdk-17-jre-headless \
        tini \
        procps \
        libnss-wrapper \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture)" /usr/lib/jvm/java-17

ENV JAVA_HOME=/usr/lib/jvm/java-17

RUN groupadd --gid "${SPARK_UID}" spark \
    && useradd --uid "${SPARK_UID}" --gid spark --create-home --home-dir /home/spark --shell /bin/bash spark

WORKDIR /opt/anomaly-spark

# pyproject.toml names README.md as the package's long description, and
# anomaly_spark/default.yaml is a symbolic link to conf/default.yaml, so conf/
# must be in place before the package is built.
COPY pyproject.toml README.md ./
COPY conf ./conf
COPY anomaly_spark ./anomaly_spark
RUN pip install . \
    && rm -rf build anomaly_spark.egg-info

# The pip-installed pyspark package is the Spark installation (bin/, jars/).
ENV SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=/usr/local/bin/python3

COPY jobs ./jobs
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/anomaly-spark-entrypoint

RUN mkdir -p /opt/anomaly-spark/jars /opt/anomaly-spark/work /data/output \
    && chown -R spark:spark /opt/anomaly-spark/jars /opt/anomaly-spark/work /data

USER ${SPARK_UID}:${SPARK_UID}

# Start a local SparkSession once with spark.jars.packages set, so Ivy downloads
# Delta Lake and its dependencies into the Ivy cache of user spark. A later
# session of that user with the same package resolves it from the cache. The
# resolved jars are also copied to /opt/anomaly-spark/jars, which the Helm chart
# puts on the driver and executor class path instead of resolving at run time.
RUN SPARK_LOCAL_IP=127.0.0.1 python - <<EOF
import shutil
from urllib.parse import urlparse
from pyspark.sql import SparkSession

spark = (
    SparkSession.builder.master("local[1]")
    .appName("resolve-delta-jars")
    .config("spark.jars.packages", "${DELTA_PACKAGE}")
    .config("spark.ui.enabled", "false")
    .getOrCreate()
)
jars = [urlparse(uri).path for uri in spark.sparkContext.getConf().get("spark.jars", "").split(",") if uri]
if not any("delta-spark" in jar for jar in jars):
    raise SystemExit(f"Delta jar was not resolved: spark.jars is {jars}")
for jar in jars:
    shutil.copy(jar, "/opt/anomaly-spark/jars/")
    print("cached", jar)
spark.stop()
EOF

WORKDIR /opt/anomaly-spark/work

# Arguments other than the Spark on Kubernetes "driver" and "executor" commands
# go to the anomaly-spark CLI.
ENTRYPOINT ["/usr/bin/tini", "-s", "--", "/usr/local/bin/anomaly-spark-entrypoint"]
CMD ["--help"]
