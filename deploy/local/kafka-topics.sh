#!/usr/bin/env bash
# kafka-topics for the local broker: passes all arguments to Kafka's
# org.apache.kafka.tools.TopicCommand, adding --bootstrap-server
# 127.0.0.1:$KAFKA_PORT unless one is given. Examples:
#   kafka-topics.sh --create --if-not-exists --topic ctwa.events --partitions 3
#   kafka-topics.sh --list
#   kafka-topics.sh --describe --topic ctwa.events
#   kafka-topics.sh --delete --topic ctwa.events
# (auto.create.topics.enable=false on the local broker: create topics first.)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
args=("$@")
has_bootstrap=false
for a in "$@"; do
  case "$a" in
  --bootstrap-server | --bootstrap-server=*) has_bootstrap=true ;;
  esac
done
if ! $has_bootstrap; then
  args=(--bootstrap-server "127.0.0.1:${KAFKA_PORT:-9092}" "${args[@]}")
fi
exec "$here/kafka.sh" run org.apache.kafka.tools.TopicCommand "${args[@]}"
