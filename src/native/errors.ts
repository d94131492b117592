/**
 * The one error class of the native layer (and of the TypeScript layers that wrap it).
 * `code` is a stable string for branching; `retry` tells the caller what to do next:
 * 'reconnect' (drop this connection, the export keeps listening), 'none' (fatal for this
 * object), or 'request' (only this request failed).
 */
export class VhostError extends Error {
  readonly code: string;

  constructor(message: string, code = 'EVHOST') {
    super(message);
    this.name = 'VhostError';
    this.code = code;
  }
}
