/**
 * The part of the Workers runtime's `cloudflare:sockets` module the transport uses (as Cloudflare documents it), so
 * the package type-checks without the Workers' global types (and without the DOM's streams).
 *
 * @internal
 */
declare module "cloudflare:sockets" {
  export interface SocketOptions {
    readonly secureTransport?: "off" | "on" | "starttls"
    readonly allowHalfOpen?: boolean
  }
  export interface StreamReader {
    read(): Promise<{ readonly done: boolean; readonly value?: Uint8Array | undefined }>
    releaseLock(): void
  }
  export interface StreamWriter {
    write(chunk: Uint8Array): Promise<void>
    releaseLock(): void
  }
  export interface Socket {
    readonly readable: { getReader(): StreamReader }
    readonly writable: { getWriter(): StreamWriter }
    readonly opened: Promise<unknown>
    readonly closed: Promise<void>
    close(): Promise<void>
    startTls(options?: { readonly expectedServerHostname?: string }): Socket
  }
  export function connect(
    address: { readonly hostname: string; readonly port: number },
    options?: SocketOptions
  ): Socket
}
