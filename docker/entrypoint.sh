#!/usr/bin/env bash
# Container entry point of the anomaly-spark image.
#
# Spark on Kubernetes starts driver and executor containers with the arguments
# "driver ..." or "executor ..." and relies on the image's entry point to turn
# them into spark-submit or executor JVM commands, as the entrypoint.sh of the
# official Spark images does. Those two cases are handled here. Any other
# arguments go to the anomaly-spark CLI, so "docker run IMAGE run --source ..."
# runs "anomaly-spark run --source ...".
set -euo pipefail

: "${SPARK_HOME:?SPARK_HOME must be set to the Spark installation (the pyspark package folder)}"
: "${JAVA_HOME:?JAVA_HOME must be set to the Java 17 installation}"

# Spark's Java code looks up the user name of the process. Under an arbitrary
# UID without a passwd entry (OpenShift), libnss_wrapper supplies one.
add_passwd_entry_if_missing() {
    local uid gid wrapper
    uid="$(id -u)"
    gid="$(id -g)"
    if getent passwd "${uid}" >/dev/null 2>&1; then
        return 0
    fi
    for wrapper in /usr/lib/*/libnss_wrapper.so /usr/lib/libnss_wrapper.so; do
        if [[ -s "${wrapper}" ]]; then
            NSS_WRAPPER_PASSWD="$(mktemp)"
            NSS_WRAPPER_GROUP="$(mktemp)"
            printf 'spark:x:%s:%s:anonymous uid:%s:/bin/false\n' "${uid}" "${gid}" "${SPARK_HOME}" >"${NSS_WRAPPER_PASSWD}"
            printf 'spark:x:%s:\n' "${gid}" >"${NSS_WRAPPER_GROUP}"
            export LD_PRELOAD="${wrapper}" NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
            return 0
        fi
    done
    echo "warning: UID ${uid} has no passwd entry and libnss_wrapper is not installed, so Spark may fail to look up the user name" >&2
}

spark_classpath() {
    local classpath="${SPARK_CLASSPATH:-}:${SPARK_HOME}/jars/*"
    if [[ -n "${SPARK_EXTRA_CLASSPATH:-}" ]]; then
        classpath="${classpath}:${SPARK_EXTRA_CLASSPATH}"
    fi
    if [[ -n "${HADOOP_CONF_DIR:-}" ]]; then
        classpath="${HADOOP_CONF_DIR}:${classpath}"
    fi
    if [[ -n "${SPARK_CONF_DIR:-}" ]]; then
        classpath="${SPARK_CONF_DIR}:${classpath}"
    else
        classpath="${SPARK_HOME}/conf:${classpath}"
    fi
    # The entrypoint.sh of the official Spark images also puts the working
    # directory on the executor class path.
    echo "${classpath}:${PWD}"
}

case "${1:-}" in
    driver)
        shift
        add_passwd_entry_if_missing
        exec "${SPARK_HOME}/bin/spark-submit" \
            --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}" \
            --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS}" \
            --deploy-mode client \
            "$@"
        ;;
    executor)
        shift
        add_passwd_entry_if_missing
        # Spark passes the executor JVM options as SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ...
        java_opts=()
        while IFS= read -r name; do
            java_opts+=("${!name}")
        done < <(compgen -v SPARK_JAVA_OPT_ | sort -t_ -k4 -n)
        exec "${JAVA_HOME}/bin/java" \
            "${java_opts[@]+"${java_opts[@]}"}" \
            -Xms"${SPARK_EXECUTOR_MEMORY}" \
            -Xmx"${SPARK_EXECUTOR_MEMORY}" \
            -cp "$(spark_classpath):${SPARK_DIST_CLASSPATH:-}" \
            org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
            --driver-url "${SPARK_DRIVER_URL}" \
            --executor-id "${SPARK_EXECUTOR_ID}" \
            --cores "${SPARK_EXECUTOR_CORES}" \
            --app-id "${SPARK_APPLICATION_ID}" \
            --hostname "${SPARK_EXECUTOR_POD_IP}" \
            --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" \
            --podName "${SPARK_EXECUTOR_POD_NAME}"
        ;;
    *)
        exec anomaly-spark "$@"
        ;;
esac
