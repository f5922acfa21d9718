/**
 * A small HTTP proxy for tests: absolute-URI requests (http targets) and CONNECT
 * tunnels (https targets), requiring `Proxy-Authorization` when credentials are set,
 * counting what passed, and able to refuse command results (to hold a result back
 * while an agent is killed).
 */
import * as http from 'node:http';
import * as net from 'node:net';

/** A running test proxy. */
export interface TestProxy {
  url: string;
  port: number;
  /** Requests forwarded, as `METHOD path` (CONNECT as `CONNECT host:port`). */
  seen: string[];
  /** Requests refused for missing/wrong credentials. */
  refused: number;
  /** While true, `POST …/result` is answered 503 without reaching the server. */
  blockResults: boolean;
  close(): Promise<void>;
}

/** Starts a proxy on 127.0.0.1 (`port`, default any); `user`/`pass` make it require Basic credentials. */
export async function startProxy(user?: string, pass?: string, port = 0): Promise<TestProxy> {
  const expected =
    user === undefined ? undefined : `Basic ${Buffer.from(`${user}:${pass ?? ''}`).toString('base64')}`;
  const sockets = new Set<net.Socket>();
  const state = { seen: [] as string[], refused: 0, blockResults: false };
  const server = http.createServer((req, res) => {
    if (expected !== undefined && req.headers['proxy-authorization'] !== expected) {
      state.refused++;
      res.writeHead(407, { 'proxy-authenticate': 'Basic realm="test"' });
      res.end();
      return;
    }
    let target: URL;
    try {
      target = new URL(req.url ?? '');
    } catch {
      res.writeHead(400);
      res.end('absolute URI required');
      return;
    }
    state.seen.push(`${req.method} ${target.pathname}`);
    if (state.blockResults && req.method === 'POST' && target.pathname.endsWith('/result')) {
      res.writeHead(503, { 'content-type': 'text/plain' });
      res.end('held back by the test proxy');
      req.resume();
      return;
    }
    const headers = { ...req.headers };
    delete headers['proxy-authorization'];
    const up = http.request(
      {
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: target.pathname + target.search,
        headers,
      },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        upRes.pipe(res);
      },
    );
    up.on('error', () => {
      res.writeHead(502);
      res.end();
    });
    req.pipe(up);
  });
  server.on('connect', (req, socket: net.Socket, head: Buffer) => {
    if (expected !== undefined && req.headers['proxy-authorization'] !== expected) {
      state.refused++;
      socket.end('HTTP/1.1 407 Proxy Authentication Required\r\n\r\n');
      return;
    }
    state.seen.push(`CONNECT ${req.url ?? ''}`);
    const [host, port] = (req.url ?? '').split(':');
    const up = net.connect(Number(port), host ?? '127.0.0.1', () => {
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length > 0) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    sockets.add(up);
    sockets.add(socket);
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
    up.on('close', () => sockets.delete(up));
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', () => r()));
  const addr = server.address() as net.AddressInfo;
  const creds = user === undefined ? '' : `${encodeURIComponent(user)}:${encodeURIComponent(pass ?? '')}@`;
  return {
    url: `http://${creds}127.0.0.1:${addr.port}`,
    port: addr.port,
    get seen() {
      return state.seen;
    },
    get refused() {
      return state.refused;
    },
    get blockResults() {
      return state.blockResults;
    },
    set blockResults(v: boolean) {
      state.blockResults = v;
    },
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
