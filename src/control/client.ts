/** Client side of the control socket, used by the CLI's stats / volumes / add / remove commands. */
import * as http from 'node:http';
import { VhostError } from '../native/errors';

export interface ControlReply {
  status: number;
  body: string;
}

export function controlRequest(socketPath: string, method: string, path: string, body?: unknown): Promise<ControlReply> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      {
        socketPath,
        method,
        path,
        headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) =>
      reject(new VhostError(`cannot reach the daemon's control socket ${socketPath}: ${err.message}`, err.code ?? 'EIO')),
    );
    req.end(payload);
  });
}

/** Like controlRequest, but parses JSON and turns an error status into a thrown VhostError. */
export async function controlJson(socketPath: string, method: string, path: string, body?: unknown): Promise<unknown> {
  const r = await controlRequest(socketPath, method, path, body);
  let parsed: unknown;
  try {
    parsed = JSON.parse(r.body);
  } catch {
    throw new VhostError(`control socket answered ${r.status} with non-JSON: ${r.body.slice(0, 200)}`, 'EPROTO');
  }
  if (r.status >= 400) {
    const e = parsed as { error?: string; code?: string };
    throw new VhostError(e.error ?? `HTTP ${r.status}`, e.code ?? 'EIO');
  }
  return parsed;
}
