# shellcheck shell=sh disable=SC3045  # dash and bash, the shells that read this, both have ulimit -c
# Kiln (provision/steps/85-accounts.sh): interactive shells of admins: no core files, logout after 15 idle minutes.
ulimit -c 0
case $- in
  *i*) TMOUT=900; readonly TMOUT; export TMOUT ;;
esac
