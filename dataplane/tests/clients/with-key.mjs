// Preloaded into the MCP conformance suite (`node --import ./with-key.mjs`)
// when it runs through the gateway: the suite has no option for extra
// headers, and the gateway (rightly) refuses anonymous agents. It adds
// `Authorization: Bearer $STOA_API_KEY` to every request the suite makes to
// $STOA_KEY_HOST (host name, e.g. 127.0.0.1), via fetch or node:http, unless
// the request already carries one, via fetch, node:http or the `undici`
// package the suite imports. Nothing else is changed.
import http from 'node:http';
import { createRequire, syncBuiltinESMExports } from 'node:module';

const key = process.env.STOA_API_KEY;
const host = process.env.STOA_KEY_HOST;

if (key && host) {
  const bearer = `Bearer ${key}`;
  const fetch0 = globalThis.fetch;
  globalThis.fetch = (input, init = {}) => {
    const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
    if (url.hostname === host) {
      const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined));
      if (!headers.has('authorization')) headers.set('authorization', bearer);
      init = { ...init, headers };
    }
    return fetch0(input, init);
  };
  const request0 = http.request;
  http.request = function (...args) {
    const req = request0.apply(this, args);
    if (req.host === host && !req.hasHeader('authorization') && !req.headersSent) {
      req.setHeader('authorization', bearer);
    }
    return req;
  };
  syncBuiltinESMExports();

  // The suite's raw requests use `undici.request`: add the header in a
  // dispatcher interceptor on the undici the suite itself resolves.
  let undici = null;
  try {
    undici = createRequire(process.argv[1])('undici');
  } catch {
    // The suite does not use undici in this version: nothing to patch.
  }
  if (undici) {
    const withKey = (dispatch) => (opts, handler) => {
      const origin = opts.origin ? new URL(String(opts.origin)) : null;
      if (origin && origin.hostname === host) {
        const h = opts.headers;
        if (Array.isArray(h)) {
          if (!h.some((v, i) => i % 2 === 0 && String(v).toLowerCase() === 'authorization')) {
            opts = { ...opts, headers: [...h, 'authorization', bearer] };
          }
        } else {
          const obj = { ...(h ?? {}) };
          if (!Object.keys(obj).some((k) => k.toLowerCase() === 'authorization')) obj.authorization = bearer;
          opts = { ...opts, headers: obj };
        }
      }
      return dispatch(opts, handler);
    };
    undici.setGlobalDispatcher(undici.getGlobalDispatcher().compose(withKey));
  }
}
