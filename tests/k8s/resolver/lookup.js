// Cluster DNS for Node.js processes (configurable-http-proxy) next to the
// Kubernetes emulator: names listed in the hosts file named by
// K8S_EMULATOR_HOSTS (e.g. "jupyter-x.ns.svc.cluster.local") resolve to the
// addresses there; every other name goes to the system resolver.
// Loaded with NODE_OPTIONS="--require <this file>" (see tests/k8s/clusterdns.py).
"use strict";
const dns = require("dns");
const fs = require("fs");

const file = process.env.K8S_EMULATOR_HOSTS;
const systemLookup = dns.lookup;

function find(host) {
  let text;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    return null;
  }
  for (const line of text.split("\n")) {
    const [address, ...names] = line.trim().split(/\s+/);
    if (address && !address.startsWith("#") && names.includes(host)) return address;
  }
  return null;
}

if (file) {
  dns.lookup = function lookup(host, options, callback) {
    if (typeof options === "function") {
      callback = options;
      options = {};
    } else if (typeof options === "number") {
      options = { family: options };
    }
    const address = typeof host === "string" ? find(host.replace(/\.$/, "")) : null;
    if (address === null) return systemLookup.call(this, host, options || {}, callback);
    if (options && options.all) {
      process.nextTick(callback, null, [{ address, family: 4 }]);
    } else {
      process.nextTick(callback, null, address, 4);
    }
    return {};
  };
}
