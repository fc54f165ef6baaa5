#!/usr/bin/env bash
# Local single-node Apache Kafka 4.x (KRaft, combined broker+controller,
# node.id=1) for development and tests. No Docker: the broker jars come from
# Maven Central (kafka-pom.xml) and the broker runs as a plain background JVM.
#
#   kafka.sh start     install if needed, start, wait until both client
#                      listeners answer (SASL_SSL: as the SCRAM user)
#   kafka.sh stop      stop the broker this script started (pid file only)
#   kafka.sh restart   stop then start, keeping the data (topics, offsets)
#   kafka.sh crash     SIGKILL the broker, then start it again on the same data
#   kafka.sh status    print state; exit 0 if running, 3 if not
#   kafka.sh install   only fetch the jars
#   kafka.sh env       print the endpoints, TLS files and users, one KEY=value
#                      a line for eval (after start): KAFKA_BOOTSTRAP,
#                      KAFKA_SASL_BOOTSTRAP, KAFKA_TLS_CA, KAFKA_TLS_CERT,
#                      KAFKA_TLS_KEY, KAFKA_SCRAM_USER, KAFKA_SCRAM_PASSWORD,
#                      KAFKA_PLAIN_USER, KAFKA_PLAIN_PASSWORD
#   kafka.sh run MAIN_CLASS [ARGS...]   run a Kafka tool class, e.g.
#       kafka.sh run org.apache.kafka.tools.ConsoleProducer --bootstrap-server 127.0.0.1:9092 --topic t
#       kafka.sh run org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server 127.0.0.1:9094 \
#         --command-config "$WAFUNNEL_LOCAL/kafka/tls/client.properties"
#   kafka.sh reset     stop and delete the broker data (not the jars, not tls/)
#
# Client listeners, both on 127.0.0.1 and advertised as such (inter-broker
# and controller traffic stays PLAINTEXT):
#   PLAINTEXT  KAFKA_PORT (9092)       no TLS, no authentication
#   SASL_SSL   KAFKA_SASL_PORT (9094)  TLS, client certificate required (signed
#              by the local CA), then SASL PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
# Users on SASL_SSL: wafunnel-scram (SCRAM-SHA-256 and SCRAM-SHA-512; added or
# updated through PLAINTEXT on every start, so a wiped data dir gets it back)
# and wafunnel-plain (PLAIN, in the broker's JAAS config). No authorizer: any
# authenticated user may do anything.
#
# TLS material and passwords are made once, when missing, and then kept (also
# across restart and reset; delete tls/ for new ones), in
# $WAFUNNEL_LOCAL/kafka/tls/ (mode 700; keys and secrets mode 600):
#   ca.pem, ca.key            local CA (RSA 2048, 3650 days)
#   broker.pem, broker.key    broker certificate, SAN IP:127.0.0.1 DNS:localhost
#   broker.p12                the same packaged as the broker's PKCS12 keystore
#   client.pem, client.key    client certificate and unencrypted PKCS#8 key
#                             (librdkafka ssl.certificate/key.location)
#   client.p12                the same as a PKCS12 keystore for Java clients
#   passwords                 KAFKA_SCRAM_PASSWORD, KAFKA_PLAIN_PASSWORD and
#                             KAFKA_TLS_STORE_PASSWORD (both .p12), KEY=value,
#                             random [0-9a-f]
#   client.properties         Java client config for SASL_SSL: SCRAM-SHA-512 as
#                             wafunnel-scram with client.p12 (--command-config)
#
# Environment: WAFUNNEL_LOCAL (default <repo>/.local), KAFKA_PORT (9092),
# KAFKA_SASL_PORT (9094), KAFKA_CONTROLLER_PORT (9093), KAFKA_HEAP_OPTS
# (-Xms256m -Xmx512m), KAFKA_START_TIMEOUT (120 s), KAFKA_STOP_TIMEOUT (30 s).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-9094}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"

KDIR="$WAFUNNEL_LOCAL/kafka"
LIBS="$KDIR/libs"
DATA="$KDIR/data"
LOGS="$KDIR/logs"
PIDFILE="$KDIR/kafka.pid"
CONF="$KDIR/server.properties"
POM="$DEPLOY_LOCAL_DIR/kafka-pom.xml"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
SASL_BOOTSTRAP="127.0.0.1:$KAFKA_SASL_PORT"

TLS="$KDIR/tls"
CA_PEM="$TLS/ca.pem"
CA_KEY="$TLS/ca.key"
BROKER_P12="$TLS/broker.p12"
CLIENT_PEM="$TLS/client.pem"
CLIENT_KEY="$TLS/client.key"
CLIENT_P12="$TLS/client.p12"
PASSWORDS="$TLS/passwords"
CLIENT_PROPS="$TLS/client.properties"
TLS_DAYS=3650
SCRAM_USER="wafunnel-scram"
PLAIN_USER="wafunnel-plain"

BROKER_MAIN="kafka.Kafka"
STORAGE_MAIN="kafka.tools.StorageTool"
API_VERSIONS_MAIN="org.apache.kafka.tools.BrokerApiVersionsCommand"
CONFIG_MAIN="kafka.admin.ConfigCommand"
# Marker searched in /proc/PID/cmdline to recognise our broker process.
PID_PATTERN="$BROKER_MAIN $CONF"

for v in KAFKA_PORT KAFKA_SASL_PORT KAFKA_CONTROLLER_PORT KAFKA_START_TIMEOUT KAFKA_STOP_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number, got '${!v}'"
done

install_jars() {
  local stamp want tmp
  want=$(sha256sum "$POM" | cut -d' ' -f1)
  stamp="$LIBS/.installed"
  if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
    return 0
  fi
  need_cmd java mvn
  if pid_of "$PIDFILE" "$PID_PATTERN" >/dev/null; then
    die "kafka-pom.xml changed while the broker runs; run '$0 stop' first"
  fi
  log "installing Kafka jars from Maven Central into $LIBS (once)"
  mkdir -p "$KDIR"
  tmp="$KDIR/libs.tmp.$$"
  rm -rf "$tmp" "$KDIR/mvn"
  mkdir -p "$KDIR/mvn"
  # Run Maven in a scratch dir so nothing is written into the repo.
  cp "$POM" "$KDIR/mvn/pom.xml"
  if ! (cd "$KDIR/mvn" && mvn -q -B dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp") >"$KDIR/install.log" 2>&1; then
    show_log_tail "$KDIR/install.log" 60
    rm -rf "$tmp"
    die "Maven could not resolve the Kafka jars (see $KDIR/install.log)"
  fi
  rm -rf "$LIBS" "$KDIR/mvn"
  mv "$tmp" "$LIBS"
  printf '%s\n' "$want" >"$stamp"
}

# secret KEY: prints KEY's value from the passwords file; 1 if it has none.
secret() {
  local line
  [[ -f $PASSWORDS ]] || return 1
  while IFS= read -r line; do
    if [[ $line == "$1="* ]]; then
      printf '%s\n' "${line#*=}"
      return 0
    fi
  done <"$PASSWORDS"
  return 1
}

# Random passwords, made once and then reused. Hex only, so that they need no
# quoting in properties files, JAAS lines or the shell.
ensure_passwords() {
  local key value changed=false lines=()
  mkdir -p "$TLS"
  chmod 700 "$TLS"
  for key in KAFKA_SCRAM_PASSWORD KAFKA_PLAIN_PASSWORD KAFKA_TLS_STORE_PASSWORD; do
    if ! value=$(secret "$key") || [[ ! $value =~ ^[0-9a-f]{32}$ ]]; then
      value=$(openssl rand -hex 16) || die "openssl rand failed"
      changed=true
    fi
    lines+=("$key=$value")
  done
  if $changed; then
    log "writing new random passwords to $PASSWORDS"
    (umask 077 && printf '%s\n' "${lines[@]}" >"$PASSWORDS.tmp")
    mv -f "$PASSWORDS.tmp" "$PASSWORDS"
  fi
  chmod 600 "$PASSWORDS"
}

# openssl settings for the local CA and the certificates it signs.
write_openssl_cnf() {
  cat >"$1" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = wafunnel local Kafka
[ext_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ext_broker]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ext_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
}

# new_ca DIR: a self-signed CA in DIR/ca.{pem,key}.
new_ca() {
  openssl req -x509 -new -config "$1/openssl.cnf" -extensions ext_ca \
    -newkey rsa:2048 -nodes -sha256 -days "$TLS_DAYS" \
    -subj "/CN=wafunnel local Kafka CA" -keyout "$1/ca.key" -out "$1/ca.pem"
}

# new_leaf DIR NAME EXTENSIONS CN: key (unencrypted PKCS#8) and certificate
# signed by the CA in $TLS, as DIR/NAME.{key,pem}.
new_leaf() {
  local dir=$1 name=$2 ext=$3 cn=$4 serial
  serial=$(openssl rand -hex 16) &&
    openssl req -new -config "$dir/openssl.cnf" -newkey rsa:2048 -nodes \
      -subj "/CN=$cn" -keyout "$dir/$name.key" -out "$dir/$name.csr" &&
    openssl x509 -req -in "$dir/$name.csr" -CA "$CA_PEM" -CAkey "$CA_KEY" \
      -set_serial "0x$serial" -days "$TLS_DAYS" -sha256 \
      -extfile "$dir/openssl.cnf" -extensions "$ext" -out "$dir/$name.pem"
}

# package_p12 NAME: $TLS/NAME.p12 from NAME.pem, NAME.key and the CA, unless
# one that opens with the current store password exists.
package_p12() {
  local name=$1 pw
  pw=$(secret KAFKA_TLS_STORE_PASSWORD) || die "no KAFKA_TLS_STORE_PASSWORD in $PASSWORDS"
  # The password goes to openssl through its environment, not its arguments.
  if [[ -s $TLS/$name.p12 ]] && STORE_PW=$pw openssl pkcs12 -noout \
    -in "$TLS/$name.p12" -passin env:STORE_PW >/dev/null 2>&1; then
    return 0
  fi
  (umask 077 && STORE_PW=$pw openssl pkcs12 -export -name "$name" \
    -in "$TLS/$name.pem" -inkey "$TLS/$name.key" -certfile "$CA_PEM" \
    -passout env:STORE_PW -out "$TLS/$name.p12.tmp") ||
    die "packaging $TLS/$name.p12 failed"
  mv -f "$TLS/$name.p12.tmp" "$TLS/$name.p12"
}

# The CA, broker and client certificates: each made only if missing (a new CA
# also means new leaf certificates), never replaced while present.
ensure_tls() {
  local tmp out name
  mkdir -p "$TLS"
  chmod 700 "$TLS"
  if [[ ! -s $CA_PEM || ! -s $CA_KEY || ! -s $TLS/broker.pem || ! -s $TLS/broker.key ||
    ! -s $CLIENT_PEM || ! -s $CLIENT_KEY ]]; then
    tmp=$(mktemp -d "$TLS/.new.XXXXXX")
    out="$tmp/openssl.log"
    write_openssl_cnf "$tmp/openssl.cnf"
    if [[ ! -s $CA_PEM || ! -s $CA_KEY ]]; then
      log "creating a local CA in $TLS"
      if ! (umask 077 && new_ca "$tmp") >"$out" 2>&1; then
        show_log_tail "$out"
        die "creating the CA failed"
      fi
      # Certificates of a previous CA would no longer verify.
      rm -f "$TLS"/broker.* "$TLS"/client.*
      mv -f "$tmp/ca.key" "$CA_KEY"
      mv -f "$tmp/ca.pem" "$CA_PEM"
    fi
    for name in broker client; do
      [[ -s $TLS/$name.pem && -s $TLS/$name.key ]] && continue
      log "creating the $name certificate in $TLS"
      rm -f "$TLS/$name.p12"
      if ! (umask 077 && new_leaf "$tmp" "$name" "ext_$name" "wafunnel-$name") >"$out" 2>&1; then
        show_log_tail "$out"
        die "creating the $name certificate failed"
      fi
      mv -f "$tmp/$name.key" "$TLS/$name.key"
      mv -f "$tmp/$name.pem" "$TLS/$name.pem"
    done
    rm -rf "$tmp"
  fi
  package_p12 broker
  package_p12 client
}

# Java client settings for the SASL_SSL listener (used by the start check;
# handy as --command-config for the Kafka tools).
write_client_properties() {
  local scram_pw store_pw
  scram_pw=$(secret KAFKA_SCRAM_PASSWORD) || die "no KAFKA_SCRAM_PASSWORD in $PASSWORDS"
  store_pw=$(secret KAFKA_TLS_STORE_PASSWORD) || die "no KAFKA_TLS_STORE_PASSWORD in $PASSWORDS"
  (umask 077 && cat >"$CLIENT_PROPS.tmp") <<EOF
# Generated by deploy/local/kafka.sh on every start; edits are overwritten.
# Java client config for the SASL_SSL listener $SASL_BOOTSTRAP.
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$SCRAM_USER" password="$scram_pw";
ssl.truststore.type=PEM
ssl.truststore.location=$CA_PEM
ssl.keystore.type=PKCS12
ssl.keystore.location=$CLIENT_P12
ssl.keystore.password=$store_pw
EOF
  mv -f "$CLIENT_PROPS.tmp" "$CLIENT_PROPS"
}

# The broker configuration (it holds passwords: written with mode 600).
server_properties() {
  local plain_pw store_pw
  plain_pw=$(secret KAFKA_PLAIN_PASSWORD) || die "no KAFKA_PLAIN_PASSWORD in $PASSWORDS"
  store_pw=$(secret KAFKA_TLS_STORE_PASSWORD) || die "no KAFKA_TLS_STORE_PASSWORD in $PASSWORDS"
  cat <<EOF
# Generated by deploy/local/kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
# SASL_SSL: TLS with a client certificate signed by the local CA required,
# then SASL. PLAIN users are the user_NAME entries of the JAAS line, SCRAM
# users live in the cluster metadata (kafka.sh start adds $SCRAM_USER).
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$BROKER_P12
listener.name.sasl_ssl.ssl.keystore.password=$store_pw
listener.name.sasl_ssl.ssl.key.password=$store_pw
listener.name.sasl_ssl.ssl.truststore.type=PEM
listener.name.sasl_ssl.ssl.truststore.location=$CA_PEM
listener.name.sasl_ssl.ssl.client.auth=required
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$PLAIN_USER="$plain_pw";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$DATA
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# After a SIGKILL (chaos tests) the restarted broker can register only once
# the old registration's session expired: keep that short (default 9 s).
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
EOF
}

write_configs() {
  mkdir -p "$DATA" "$LOGS"
  (umask 077 && server_properties >"$CONF.tmp")
  mv -f "$CONF.tmp" "$CONF"
  cat >"$KDIR/log4j2.properties" <<'EOF'
# Broker logging: everything to a size-capped file, nothing to the console.
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
EOF
  write_tools_log4j
}

write_tools_log4j() {
  mkdir -p "$KDIR"
  [[ -f $KDIR/tools-log4j2.properties ]] && return 0
  cat >"$KDIR/tools-log4j2.properties" <<'EOF'
# Tool (CLI) logging: warnings and errors to stderr only.
status = warn
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = err
EOF
}

# Run a Kafka tool class in the foreground.
run_tool() {
  local main=$1
  shift
  # shellcheck disable=SC2086 # KAFKA_TOOL_OPTS is a list of JVM flags
  java ${KAFKA_TOOL_OPTS:--Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1} \
    -Dlog4j2.configurationFile="$KDIR/tools-log4j2.properties" \
    -cp "$LIBS/*" "$main" "$@"
}

format_storage() {
  [[ -f $DATA/meta.properties ]] && return 0
  local cid
  # A KRaft cluster id is 16 random bytes, URL-safe base64 without padding.
  cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
  if ! run_tool "$STORAGE_MAIN" format --cluster-id="$cid" --config "$CONF" \
    --ignore-formatted >"$LOGS/format.log" 2>&1; then
    show_log_tail "$LOGS/format.log"
    die "formatting the KRaft storage in $DATA failed"
  fi
}

# quick_tool MAIN_CLASS [ARGS...]: a short-lived Kafka tool, at most 30 s.
quick_tool() {
  timeout 30 java -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$KDIR/tools-log4j2.properties" \
    -cp "$LIBS/*" "$@"
}

# Asks the broker for its API versions over SASL_SSL (a Metadata request,
# then ApiVersions to each broker it lists) as the SCRAM user with
# SCRAM-SHA-512 and the client certificate: succeeds only once the broker
# serves and TLS, client authentication and SCRAM all work.
sasl_api_versions_ok() {
  quick_tool "$API_VERSIONS_MAIN" --bootstrap-server "$SASL_BOOTSTRAP" \
    --command-config "$CLIENT_PROPS" >"$LOGS/sasl-check.log" 2>&1
}

# Adds the SCRAM user, or resets its credentials to the stored password, for
# both SCRAM mechanisms (through PLAINTEXT; the data dir may predate them).
# One request per mechanism, the two at once: Kafka 4.1 rejects two
# alterations of one user in one request ("A user credential cannot be
# altered twice in the same request").
upsert_scram_user() {
  local pw mech cfg pid rc=0 pids=()
  pw=$(secret KAFKA_SCRAM_PASSWORD) || return 1
  for mech in SCRAM-SHA-256 SCRAM-SHA-512; do
    # A file rather than --add-config keeps the password off the command line.
    cfg="$TLS/.scram-$mech.properties"
    (umask 077 && printf '%s=password=%s\n' "$mech" "$pw" >"$cfg")
    quick_tool "$CONFIG_MAIN" --bootstrap-server "$BOOTSTRAP" --alter \
      --entity-type users --entity-name "$SCRAM_USER" --add-config-file "$cfg" \
      >"$LOGS/scram-$mech.log" 2>&1 &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || rc=1
  done
  rm -f "$TLS"/.scram-*.properties
  return "$rc"
}

# port_released PORT: true once nothing listens on PORT, waiting up to 20 s.
# A broker just killed can still hold its sockets for a moment: its main
# thread is already a zombie while the other threads are being torn down.
port_released() {
  local waited=0
  while tcp_open 127.0.0.1 "$1"; do
    ((waited < 200)) || return 1
    sleep 0.1
    waited=$((waited + 1))
  done
}

start() {
  need_cmd java openssl
  take_lock "$KDIR/.lock"
  install_jars
  write_tools_log4j
  ensure_passwords
  ensure_tls
  write_client_properties
  mkdir -p "$LOGS"
  local pid
  if pid=$(pid_of "$PIDFILE" "$PID_PATTERN"); then
    # Running (maybe still starting): wait below. A broker started with other
    # settings (an older script, other ports or passwords) would never pass.
    if [[ ! -f $CONF || $(server_properties) != "$(<"$CONF")" ]]; then
      die "the running broker (pid $pid) runs with other settings than $0 now writes (an older script's, other ports or passwords); run '$0 restart'"
    fi
  else
    rm -f "$PIDFILE"
    local var
    for var in KAFKA_PORT KAFKA_SASL_PORT KAFKA_CONTROLLER_PORT; do
      port_released "${!var}" || die "port ${!var} is already in use by another process (set $var)"
    done
    write_configs
    format_storage
    : >"$LOGS/stdout.log"
    # setsid: own session, so the broker outlives the calling shell's job
    # control; all std fds and the lock fd are detached from the caller.
    # shellcheck disable=SC2016,SC2086
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
      java -server $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -Djava.awt.headless=true \
      -Dkafka.logs.dir="$LOGS" \
      -Dlog4j2.configurationFile="$KDIR/log4j2.properties" \
      -cp "$LIBS/*" $BROKER_MAIN "$CONF" \
      </dev/null >>"$LOGS/stdout.log" 2>&1 9>&- &
    # Wait for the child to record its pid.
    for _ in $(seq 1 50); do
      [[ -s $PIDFILE ]] && break
      sleep 0.1
    done
  fi

  # First the SCRAM user is added over PLAINTEXT (idempotent, on every start;
  # that it succeeds also shows PLAINTEXT serves), then SASL_SSL must accept
  # it, which can lag a moment.
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT)) scram_done=false
  rm -f "$LOGS"/scram-*.log "$LOGS/sasl-check.log"
  while ((SECONDS < deadline)); do
    if ! pid_of "$PIDFILE" "$PID_PATTERN" >/dev/null; then
      show_log_tail "$LOGS/stdout.log" 20
      show_log_tail "$LOGS/server.log" 40
      rm -f "$PIDFILE"
      die "Kafka broker exited during startup (logs in $LOGS)"
    fi
    if ! $scram_done && tcp_open 127.0.0.1 "$KAFKA_PORT" && upsert_scram_user; then
      scram_done=true
    fi
    if $scram_done && tcp_open 127.0.0.1 "$KAFKA_SASL_PORT" && sasl_api_versions_ok; then
      return 0
    fi
    sleep 0.5
  done
  show_log_tail "$LOGS/stdout.log" 20
  show_log_tail "$LOGS/server.log" 40
  if $scram_done; then
    show_log_tail "$LOGS/sasl-check.log" 20
    die "Kafka broker did not accept $SCRAM_USER on $SASL_BOOTSTRAP (SASL_SSL) within ${KAFKA_START_TIMEOUT}s (still running; '$0 stop' to end it)"
  fi
  show_log_tail "$LOGS/scram-SCRAM-SHA-256.log" 20
  show_log_tail "$LOGS/scram-SCRAM-SHA-512.log" 20
  die "Kafka broker did not answer on $BOOTSTRAP within ${KAFKA_START_TIMEOUT}s (still running; '$0 stop' to end it)"
}

# KEY=value lines for eval: endpoints, TLS files, users and passwords.
print_env() {
  local scram_pw plain_pw
  if [[ ! -s $CA_PEM || ! -s $CLIENT_PEM || ! -s $CLIENT_KEY ]] ||
    ! scram_pw=$(secret KAFKA_SCRAM_PASSWORD) ||
    ! plain_pw=$(secret KAFKA_PLAIN_PASSWORD); then
    die "no TLS material or passwords in $TLS yet; run '$0 start' first"
  fi
  printf 'KAFKA_BOOTSTRAP=%q\n' "$BOOTSTRAP"
  printf 'KAFKA_SASL_BOOTSTRAP=%q\n' "$SASL_BOOTSTRAP"
  printf 'KAFKA_TLS_CA=%q\n' "$CA_PEM"
  printf 'KAFKA_TLS_CERT=%q\n' "$CLIENT_PEM"
  printf 'KAFKA_TLS_KEY=%q\n' "$CLIENT_KEY"
  printf 'KAFKA_SCRAM_USER=%q\n' "$SCRAM_USER"
  printf 'KAFKA_SCRAM_PASSWORD=%q\n' "$scram_pw"
  printf 'KAFKA_PLAIN_USER=%q\n' "$PLAIN_USER"
  printf 'KAFKA_PLAIN_PASSWORD=%q\n' "$plain_pw"
}

stop() {
  take_lock "$KDIR/.lock"
  stop_pidfile "$PIDFILE" "$PID_PATTERN" "$KAFKA_STOP_TIMEOUT" "Kafka broker"
}

status() {
  local pid
  if pid=$(pid_of "$PIDFILE" "$PID_PATTERN"); then
    if tcp_open 127.0.0.1 "$KAFKA_PORT"; then
      echo "kafka: running (pid $pid), bootstrap $BOOTSTRAP, SASL_SSL $SASL_BOOTSTRAP"
    else
      echo "kafka: starting (pid $pid), bootstrap $BOOTSTRAP not open yet"
    fi
    return 0
  fi
  echo "kafka: stopped"
  return 3
}

case "${1:-}" in
start) start ;;
stop) stop ;;
restart)
  stop
  exec 9>&-
  start
  ;;
crash)
  # SIGKILL, as a crashed machine would: no controlled shutdown, then start
  # again on the same data (the chaos test's broker fault).
  take_lock "$KDIR/.lock"
  if pid=$(pid_of "$PIDFILE" "$PID_PATTERN"); then
    kill -KILL "$pid" 2>/dev/null || true
    while proc_running "$pid"; do sleep 0.1; done
    rm -f "$PIDFILE"
  fi
  exec 9>&-
  start
  ;;
status) status ;;
env) print_env ;;
install)
  take_lock "$KDIR/.lock"
  install_jars
  ;;
run)
  shift
  [[ $# -ge 1 ]] || die "usage: $0 run MAIN_CLASS [ARGS...]"
  need_cmd java
  install_jars
  write_tools_log4j
  run_tool "$@"
  ;;
reset)
  stop
  rm -rf "$DATA" "$LOGS"
  ;;
*)
  echo "usage: $0 {start|stop|restart|crash|status|env|install|run MAIN_CLASS [ARGS...]|reset}" >&2
  exit 2
  ;;
esac
