// Preloaded (node --import) by the tests that run the JavaScript snippets: every TCP connection
// that is not to loopback fails at once (the socket errors before any DNS lookup) and is reported
// on stderr, which the tests check, so a client that phones home, even one that swallows the
// error, fails its test instead of reaching the network.
import dns from "node:dns";
import net from "node:net";

const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost"]);
const connect = net.Socket.prototype.connect;

net.Socket.prototype.connect = function (...args) {
  const first = Array.isArray(args[0]) ? args[0][0] : args[0];
  let host = "localhost";                       // net's default when none is given
  if (first !== null && typeof first === "object") {
    if (first.path) return connect.apply(this, args);   // a Unix socket (as net decides)
    host = first.host ?? host;
  } else if (typeof first === "string" && !/^\d+$/.test(first)) {
    return connect.apply(this, args);           // a Unix socket path
  } else if (typeof args[1] === "string") {
    host = args[1];
  }
  if (!LOOPBACK.has(String(host).toLowerCase().replace(/^\[|\]$/g, ""))) {
    process.stderr.write(`loopback_only: refused a connection to ${host}\n`);
    const error = new Error(`tests allow loopback only; refused a connection to ${host}`);
    setImmediate(() => this.destroy(error));
    return this;
  }
  return connect.apply(this, args);
};

// DNS lookups of other names are refused too (a client may resolve before it connects).

const lookup = dns.lookup;
dns.lookup = function (hostname, ...rest) {
  if (!LOOPBACK.has(String(hostname).toLowerCase())) {
    process.stderr.write(`loopback_only: refused a DNS lookup of ${hostname}\n`);
    const callback = rest[rest.length - 1];
    const error = Object.assign(new Error(`tests allow loopback only; refused ${hostname}`),
                                { code: "ENOTFOUND" });
    if (typeof callback === "function") process.nextTick(() => callback(error));
    return {};
  }
  return lookup.call(this, hostname, ...rest);
};
const promisesLookup = dns.promises.lookup;
dns.promises.lookup = async function (hostname, ...rest) {
  if (!LOOPBACK.has(String(hostname).toLowerCase())) {
    process.stderr.write(`loopback_only: refused a DNS lookup of ${hostname}\n`);
    throw Object.assign(new Error(`tests allow loopback only; refused ${hostname}`),
                        { code: "ENOTFOUND" });
  }
  return promisesLookup.call(this, hostname, ...rest);
};
