/**
 * The agent's outbound HTTP: plain `node:http`/`node:https` requests, directly or
 * through an HTTP proxy with optional `user:pass@` credentials (R-INF-4) — CONNECT
 * tunnels for https targets, absolute-URI requests for http targets. Node 20's fetch
 * takes no proxy, hence this small client.
 */
import * as http from 'node:http';
import * as https from 'node:https';
import * as tls from 'node:tls';
import type { Duplex } from 'node:stream';

/** An HTTP proxy to go through. */
export interface ProxyConfig {
  host: string;
  port: number;
  /** `Basic …` value of Proxy-Authorization, when the proxy URL carries credentials. */
  authorization: string | undefined;
}

/** Parses `http://[user:pass@]host:port` (port default 3128 / 80). */
export function parseProxyUrl(url: string): ProxyConfig {
  let u: URL;
  try {
    u = new URL(url.includes('://') ? url : `http://${url}`);
  } catch {
    throw new Error(`invalid proxy URL ${JSON.stringify(url)}: expected http://[user:pass@]host:port`);
  }
  if (u.protocol !== 'http:') throw new Error(`proxy ${url}: only http:// proxies are supported`);
  const user = decodeURIComponent(u.username);
  const pass = decodeURIComponent(u.password);
  return {
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port: u.port === '' ? 3128 : Number(u.port),
    authorization:
      user === '' && pass === '' ? undefined : `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`,
  };
}

/** One request. */
export interface HttpRequest {
  method: string;
  url: string;
  headers?: Record<string, string>;
  body?: string;
  /** Give up after this many ms (default 30 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** One response (the body read whole). */
export interface HttpResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** Options of `HttpClient`. */
export interface HttpClientOptions {
  proxy?: ProxyConfig;
  /** Extra CA certificates (PEM) for https control planes. */
  ca?: string;
}

/** Sends requests directly or through the configured proxy. */
export class HttpClient {
  readonly #o: HttpClientOptions;

  constructor(options: HttpClientOptions = {}) {
    this.#o = options;
  }

  /** Sends the request; network failures reject (with the socket error), HTTP statuses resolve. */
  async request(req: HttpRequest): Promise<HttpResponse> {
    const url = new URL(req.url);
    const timeoutMs = req.timeoutMs ?? 30_000;
    const headers: Record<string, string> = { ...req.headers };
    if (req.body !== undefined) headers['content-length'] = String(Buffer.byteLength(req.body));
    const isHttps = url.protocol === 'https:';
    const port = url.port === '' ? (isHttps ? 443 : 80) : Number(url.port);
    const proxy = this.#o.proxy;
    let options: http.RequestOptions;
    let mod: typeof http | typeof https = isHttps ? https : http;
    if (proxy === undefined) {
      options = { host: url.hostname, port, path: url.pathname + url.search, method: req.method, headers };
      if (isHttps && this.#o.ca !== undefined) (options as https.RequestOptions).ca = this.#o.ca;
    } else if (!isHttps) {
      // RFC 9112 §3.2.2: a request to a proxy carries the absolute URI as its target.
      options = {
        host: proxy.host,
        port: proxy.port,
        path: url.href,
        method: req.method,
        headers: {
          ...headers,
          host: url.host,
          ...(proxy.authorization === undefined ? {} : { 'proxy-authorization': proxy.authorization }),
        },
        agent: false,
      };
      mod = http;
    } else {
      const socket = await this.#connectTunnel(proxy, url.hostname, port, timeoutMs, req.signal);
      const tlsSocket = tls.connect({ socket, servername: url.hostname, ca: this.#o.ca });
      options = {
        host: url.hostname,
        port,
        path: url.pathname + url.search,
        method: req.method,
        headers,
        // No `agent`: only without one does the request use `createConnection` (the tunnelled TLS socket).
        createConnection: () => tlsSocket,
      };
    }
    return new Promise<HttpResponse>((resolve, reject) => {
      const r = mod.request({ ...options, signal: req.signal }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          clearTimeout(timer);
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString('utf8'),
          });
        });
        res.on('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
      });
      const timer = setTimeout(
        () => r.destroy(new Error(`no answer from ${url.origin} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      r.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      r.end(req.body);
    });
  }

  #connectTunnel(
    proxy: ProxyConfig,
    host: string,
    port: number,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<Duplex> {
    const target = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    return new Promise((resolve, reject) => {
      const r = http.request({
        host: proxy.host,
        port: proxy.port,
        method: 'CONNECT',
        path: target,
        headers: {
          host: target,
          ...(proxy.authorization === undefined ? {} : { 'proxy-authorization': proxy.authorization }),
        },
        agent: false,
        signal,
      });
      const timer = setTimeout(
        () =>
          r.destroy(
            new Error(`proxy ${proxy.host}:${proxy.port} did not open a tunnel within ${timeoutMs} ms`),
          ),
        timeoutMs,
      );
      r.once('connect', (res, socket) => {
        clearTimeout(timer);
        if (res.statusCode !== 200) {
          socket.destroy();
          reject(
            new Error(
              `proxy ${proxy.host}:${proxy.port} refused CONNECT ${target}: ${res.statusCode} ${res.statusMessage ?? ''}`.trim(),
            ),
          );
          return;
        }
        resolve(socket);
      });
      r.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      r.end();
    });
  }
}
