#!/usr/bin/env node
// STOA integration-test client built on the official MCP TypeScript SDK.
//
//   node ts-client.mjs --url URL [--header 'Name: value']... --scenario NAME
//                      [--tool NAME] [--args JSON] [--timeout-ms N] [--settle-ms N]
//                      [--no-terminate] [--resume-delay-ms N]
//
// Scenarios: list | call | session | resume. Each prints exactly ONE JSON
// object on stdout when it finishes and exits 0; on failure it prints the
// error on stderr and exits 1. See README.md.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CallToolResultSchema,
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ErrorCode,
  ListRootsRequestSchema,
  LoggingMessageNotificationSchema,
  McpError,
} from '@modelcontextprotocol/sdk/types.js';

const ROOTS = [{ uri: 'file:///stoa-test-root', name: 'stoa-root' }];

function parseArgs(argv) {
  const opts = {
    url: undefined,
    headers: {},
    scenario: undefined,
    tool: undefined,
    args: {},
    timeoutMs: 60000,
    settleMs: 500,
    terminate: true,
    resumeDelayMs: 2500,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`missing value for ${a}`);
      return argv[++i];
    };
    switch (a) {
      case '--url': opts.url = next(); break;
      case '--header': {
        const h = next();
        const idx = h.indexOf(':');
        if (idx <= 0) throw new Error(`bad --header ${JSON.stringify(h)}, expected 'Name: value'`);
        opts.headers[h.slice(0, idx).trim()] = h.slice(idx + 1).trim();
        break;
      }
      case '--scenario': opts.scenario = next(); break;
      case '--tool': opts.tool = next(); break;
      case '--args': opts.args = JSON.parse(next()); break;
      case '--timeout-ms': opts.timeoutMs = Number(next()); break;
      case '--settle-ms': opts.settleMs = Number(next()); break;
      case '--no-terminate': opts.terminate = false; break;
      case '--resume-delay-ms': opts.resumeDelayMs = Number(next()); break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!opts.url) throw new Error('--url is required');
  if (!opts.scenario) throw new Error('--scenario is required');
  return opts;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- elicitation: produce a plausible value for every requested property ----
function fillValue(schema) {
  if (!schema || typeof schema !== 'object') return 'stoa';
  if ('const' in schema) return schema.const;
  if (Array.isArray(schema.enum) && schema.enum.length) return schema.enum[0];
  for (const k of ['oneOf', 'anyOf']) {
    if (Array.isArray(schema[k]) && schema[k].length) return fillValue(schema[k][0]);
  }
  const clamp = (v) => {
    if (typeof schema.minimum === 'number' && v < schema.minimum) v = schema.minimum;
    if (typeof schema.maximum === 'number' && v > schema.maximum) v = schema.maximum;
    return v;
  };
  switch (schema.type) {
    case 'number':
    case 'integer':
      return clamp(42);
    case 'boolean':
      return true;
    case 'array':
      return [fillValue(schema.items ?? { type: 'string' })];
    case 'string':
    default:
      switch (schema.format) {
        case 'email': return 'stoa@example.com';
        case 'uri': return 'https://example.com/stoa';
        case 'date': return '2000-01-01';
        case 'date-time': return '2000-01-01T00:00:00Z';
        default: return 'stoa';
      }
  }
}

function fillElicitation(requestedSchema) {
  const content = {};
  for (const [name, prop] of Object.entries(requestedSchema?.properties ?? {})) {
    content[name] = fillValue(prop);
  }
  return content;
}

function lastUserText(messages) {
  const users = (messages ?? []).filter((m) => m.role === 'user');
  const last = users[users.length - 1];
  if (!last) return '';
  const blocks = Array.isArray(last.content) ? last.content : [last.content];
  return blocks.filter((b) => b && b.type === 'text').map((b) => b.text).join('\n');
}

// ---- client construction ----
function makeClient(stats) {
  const client = new Client(
    { name: 'stoa-ts-test-client', version: '0.1.0' },
    {
      capabilities: {
        sampling: {},
        elicitation: { form: {} },
        roots: { listChanged: true },
      },
    },
  );
  client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
    stats.sampling += 1;
    return {
      role: 'assistant',
      content: { type: 'text', text: `stoa-sampled: ${lastUserText(req.params.messages)}` },
      model: 'stoa-test-model',
      stopReason: 'endTurn',
    };
  });
  client.setRequestHandler(ElicitRequestSchema, async (req) => {
    if (req.params.mode === 'url') {
      throw new McpError(ErrorCode.InvalidParams, 'stoa test client only supports form elicitation');
    }
    stats.elicitation += 1;
    return { action: 'accept', content: fillElicitation(req.params.requestedSchema) };
  });
  client.setRequestHandler(ListRootsRequestSchema, async () => {
    stats.roots += 1;
    return { roots: ROOTS };
  });
  client.setNotificationHandler(LoggingMessageNotificationSchema, async (n) => {
    stats.logs.push(n.params);
  });
  // Background errors (e.g. the GET stream failing) are not fatal for a scenario;
  // report them on stderr for debugging.
  client.onerror = (err) => {
    stats.errors.push(String(err?.message ?? err));
    process.stderr.write(`[ts-client] transport/protocol error: ${err?.message ?? err}\n`);
  };
  return client;
}

function newStats() {
  return { sampling: 0, elicitation: 0, roots: 0, logs: [], errors: [] };
}

function makeTransport(opts, extra = {}) {
  return new StreamableHTTPClientTransport(new URL(opts.url), {
    requestInit: { headers: { ...opts.headers } },
    ...extra,
  });
}

function isMethodNotFound(err) {
  return err instanceof McpError ? err.code === ErrorCode.MethodNotFound : /method not found/i.test(String(err?.message));
}

async function listAll(fn, key, map) {
  const out = [];
  let cursor;
  do {
    const page = await fn(cursor ? { cursor } : undefined);
    out.push(...page[key].map(map));
    cursor = page.nextCursor;
  } while (cursor);
  return out;
}

async function listOrNull(fn, key, map) {
  try {
    return await listAll(fn, key, map);
  } catch (err) {
    if (isMethodNotFound(err)) return null;
    throw err;
  }
}

async function terminate(transport) {
  try {
    await transport.terminateSession();
    return true;
  } catch (err) {
    process.stderr.write(`[ts-client] terminateSession failed: ${err?.message ?? err}\n`);
    return false;
  }
}

async function callTool(client, opts, progress) {
  return client.callTool(
    { name: opts.tool, arguments: opts.args },
    CallToolResultSchema,
    {
      timeout: opts.timeoutMs,
      resetTimeoutOnProgress: true,
      onprogress: (p) => progress.push({ progress: p.progress, total: p.total ?? null, message: p.message ?? null }),
    },
  );
}

// ---- scenarios ----
async function scenarioList(opts) {
  const stats = newStats();
  const client = makeClient(stats);
  const transport = makeTransport(opts);
  await client.connect(transport, { timeout: opts.timeoutMs });
  const caps = client.getServerCapabilities() ?? {};
  const tools = await listAll((p) => client.listTools(p), 'tools', (t) => t.name);
  const resources = await listOrNull((p) => client.listResources(p), 'resources', (r) => r.uri);
  const prompts = await listOrNull((p) => client.listPrompts(p), 'prompts', (p) => p.name);
  const out = {
    serverInfo: client.getServerVersion(),
    protocolVersion: transport.protocolVersion,
    capabilities: caps,
    tools,
    resources,
    prompts,
  };
  if (opts.terminate) await terminate(transport);
  await client.close();
  return out;
}

async function scenarioCall(opts) {
  if (!opts.tool) throw new Error('--tool is required for scenario call');
  const stats = newStats();
  const client = makeClient(stats);
  const transport = makeTransport(opts);
  await client.connect(transport, { timeout: opts.timeoutMs });
  const progress = [];
  const result = await callTool(client, opts, progress);
  // Notifications sent on the standalone GET stream (e.g. logging) are not
  // ordered with the POST response: give them a moment to arrive.
  if (opts.settleMs > 0) await sleep(opts.settleMs);
  const out = {
    result,
    progress,
    logs: stats.logs,
    sampling: stats.sampling,
    elicitation: stats.elicitation,
    roots: stats.roots,
    sessionId: transport.sessionId ?? null,
  };
  if (opts.terminate) await terminate(transport);
  await client.close();
  return out;
}

async function scenarioSession(opts) {
  if (!opts.tool) throw new Error('--tool is required for scenario session');
  const stats = newStats();
  const client = makeClient(stats);
  const transport = makeTransport(opts);
  await client.connect(transport, { timeout: opts.timeoutMs });
  const sessionId = transport.sessionId ?? null;
  // Printed early (its own line) so a test can act on the id while the client runs;
  // the final line is the complete result object.
  process.stdout.write(JSON.stringify({ sessionId }) + '\n');
  const progress = [];
  const result = await callTool(client, opts, progress);
  await transport.terminateSession(); // throws on failure -> non-zero exit
  const afterTerminate = transport.sessionId ?? null;
  await client.close();
  return { sessionId, result, terminated: true, sessionIdAfterTerminate: afterTerminate };
}

// resume: cut the POST SSE stream of the tools/call after the first progress
// event (client-side disconnect, as a flaky network would), then let the SDK
// reconnect by itself with GET + Last-Event-ID and finish the call from the
// replayed/continued stream.
async function scenarioResume(opts) {
  const tool = opts.tool ?? 'trigger-long-running-operation';
  const args = opts.tool ? opts.args : { duration: 2, steps: 4 };
  const wire = { posts: 0, cutAfterEvents: null, progressBeforeCut: null, gets: [] };
  const progress = [];
  let cut = false;
  const baseFetch = globalThis.fetch;
  const fetchWrap = async (url, init = {}) => {
    const method = (init.method ?? 'GET').toUpperCase();
    const headers = new Headers(init.headers ?? {});
    if (method === 'GET') wire.gets.push({ lastEventId: headers.get('last-event-id') });
    const res = await baseFetch(url, init);
    const isCall = method === 'POST' && typeof init.body === 'string' && init.body.includes('"tools/call"');
    const ct = res.headers.get('content-type') ?? '';
    if (!isCall || cut || !res.body || !ct.includes('text/event-stream')) return res;
    wire.posts += 1;
    cut = true;
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let text = '';
    let events = 0;
    let sawProgress = false;
    const body = new ReadableStream({
      async pull(controller) {
        if (sawProgress) {
          // Drop the connection for real (server sees the socket go away) and
          // end our side gracefully so the SDK processes everything it got.
          wire.cutAfterEvents = events;
          wire.progressBeforeCut = progress.length;
          reader.cancel().catch(() => {});
          controller.close();
          return;
        }
        const { value, done } = await reader.read();
        if (done) { controller.close(); return; }
        text += decoder.decode(value, { stream: true });
        let sep;
        while ((sep = text.indexOf('\n\n')) !== -1) {
          const ev = text.slice(0, sep);
          text = text.slice(sep + 2);
          events += 1;
          if (ev.includes('notifications/progress')) sawProgress = true;
        }
        controller.enqueue(value);
      },
      cancel(reason) { return reader.cancel(reason); },
    });
    return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
  };

  const stats = newStats();
  const client = makeClient(stats);
  const transport = makeTransport(opts, {
    fetch: fetchWrap,
    // Reconnect after the operation has finished server-side: the reference
    // server's toy event store only replays what it stored before the GET.
    reconnectionOptions: {
      initialReconnectionDelay: opts.resumeDelayMs,
      maxReconnectionDelay: 30000,
      reconnectionDelayGrowFactor: 1.5,
      maxRetries: 3,
    },
  });
  const tokens = [];
  await client.connect(transport, { timeout: opts.timeoutMs });
  const result = await client.callTool({ name: tool, arguments: args }, CallToolResultSchema, {
    timeout: opts.timeoutMs,
    resetTimeoutOnProgress: true,
    onprogress: (p) => progress.push({ progress: p.progress, total: p.total ?? null, message: p.message ?? null }),
    onresumptiontoken: (t) => tokens.push(t),
  });
  const resumedGets = wire.gets.filter((g) => g.lastEventId);
  const out = {
    result,
    progress,
    eventIds: tokens,
    cutAfterEvents: wire.cutAfterEvents,
    progressBeforeCut: wire.progressBeforeCut,
    resumed: resumedGets.length > 0,
    resumeRequests: resumedGets,
    sessionId: transport.sessionId ?? null,
  };
  if (opts.terminate) await terminate(transport);
  await client.close();
  return out;
}

const SCENARIOS = { list: scenarioList, call: scenarioCall, session: scenarioSession, resume: scenarioResume };

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const fn = SCENARIOS[opts.scenario];
  if (!fn) throw new Error(`unknown scenario ${opts.scenario} (expected ${Object.keys(SCENARIOS).join('|')})`);
  const out = await fn(opts);
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`[ts-client] error: ${err?.stack ?? err}\n`);
    process.exit(1);
  },
);
