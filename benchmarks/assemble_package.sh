#!/usr/bin/env bash
# Sourced by the GPU scripts: assemble_jaxvdm ROOT lays out the repository at ROOT as the installed package
# (models/, sharding/, configs/ become jaxvdm.models, jaxvdm.sharding, jaxvdm.configs) in /tmp/jvsrc, for
# machines where jaxvdm is not installed. Put /tmp/jvsrc on PYTHONPATH and run from outside ROOT: there,
# ROOT's own jaxvdm/ folder would shadow the assembled package.
assemble_jaxvdm() {
  local root=$1
  rm -rf /tmp/jvsrc && mkdir -p /tmp/jvsrc
  cp -r "$root/jaxvdm" /tmp/jvsrc/ && cp -r "$root/models" /tmp/jvsrc/jaxvdm/models \
    && cp -r "$root/sharding" /tmp/jvsrc/jaxvdm/sharding && cp -r "$root/configs" /tmp/jvsrc/jaxvdm/configs
}
