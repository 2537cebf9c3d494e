#!/usr/bin/env node
/*
 * Drives a CRI streaming URL over SPDY/3.1 the way kubelet's SPDY clients do
 * (client-go tools/remotecommand and tools/portforward on apimachinery's
 * httpstream/spdy), with the npm package `spdy-transport` 3.0.0 as the SPDY
 * implementation. The websocket twin is k8s_stream.py. Prints one JSON object.
 *
 *   spdy_stream.js exec URL [--stdin TEXT | --stdin-file PATH] [--no-stdout]
 *                  [--no-stderr] [--tty] [--resize COLSxROWS] [--protocols a,b,c]
 *        exec or attach: upgrade, then create the streams, each once the
 *        previous one's SYN_REPLY came (as client-go does): error; stdin if
 *        --stdin/--stdin-file; stdout unless --no-stdout; stderr unless
 *        --no-stderr or --tty; resize if --tty and the protocol is v3/v4.
 *        Write TEXT (or PATH's bytes: one argument holds < 128 KiB) on stdin,
 *        then half-close it (empty DATA with FIN); with --resize write
 *        {"Width":C,"Height":R}\n on resize. Read until error, stdout and
 *        stderr have all ended (FIN or RST) or the connection closed, 60 s
 *        at most; then, as client-go's conn.Close(), RST_STREAM (CANCEL) the
 *        streams not closed both ways, GOAWAY, close.
 *        -> {"protocol", "stdout", "stderr", "error", "status", "returncode",
 *            "timeout", "fin", "transport_errors"}
 *           protocol: the 101's X-Stream-Protocol-Version (null if absent);
 *           error: raw text of the error stream; status: that text parsed
 *           as JSON (v4's metav1.Status) or null; returncode: 0 for status
 *           "Success", the ExitCode cause as an int for reason
 *           "NonZeroExitCode", else null (so null before v4, where success
 *           is an empty error stream); timeout: the 60 s ran out;
 *           fin: {stream type: the server ended it with FIN};
 *           transport_errors: RST_STREAMs other than CANCEL, a SYN_REPLY
 *           without :status, socket and SPDY errors ([] when all is well).
 *   spdy_stream.js leave URL [--protocols a,b,c]
 *        exec streams (error, stdout, stderr); wait for the first non-empty
 *        stdout DATA (60 s), then destroy the socket without a word.
 *        -> {"protocol", "first", "timeout"}
 *   spdy_stream.js portforward URL PORT DATA [COUNT] [--half-close] [--protocols a,b,c]
 *        COUNT (default 1) forwarded connections at once in one session,
 *        request ids 0..COUNT-1. For each, as client-go's PortForwarder:
 *        error stream {streamtype: error, port, requestid}, half-closed as
 *        soon as it is replied to, then data stream {streamtype: data, ...};
 *        write DATA (then, with --half-close, end the data stream, as
 *        client-go does at its local end of input); read until both streams
 *        end (60 s).
 *        -> {"protocol", "received": [data stream text per connection],
 *            "errors": [error stream text per connection, "" if none],
 *            "timeout", "transport_errors"}
 *   spdy_stream.js portforward-error URL PORT [--protocols a,b,c]
 *        one pair (request id 0), sends nothing, waits for the error stream
 *        to end or the connection to close (60 s).
 *        -> {"error", "protocol", "timeout"}
 *   spdy_stream.js record [--compress]
 *        no network: a spdy-transport client and server on an in-memory
 *        pipe; the client opens {streamtype: error} and {streamtype: stdin},
 *        writes "hi\n" on stdin, half-closes it, pings. Prints every frame
 *        each side wrote, in order, as labelled hex. Header blocks share ONE
 *        zlib context per direction, so they decode only in this order.
 *        --compress: spdy-transport's headerCompression option (default off).
 *
 * A non-101 answer to the upgrade is data, not a failure:
 *   -> {"http_status": N, "body": "..."}
 * Exits 0 whatever the server said; only a crash of this client (bad
 * arguments, no HTTP server at URL, a bug) exits 1, printing
 * {"exception": "..."}.
 */
'use strict'

const fs = require('fs')
const http = require('http')
const zlib = require('zlib')
const { Duplex } = require('stream')
const transport = require('spdy-transport')

const LIMIT_MS = 60000
const EXEC_PROTOCOLS = ['v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io']
const PORTFORWARD_PROTOCOLS = ['portforward.k8s.io']

/* Prints one JSON line and exits once it is flushed (a pipe takes a large
 * write in pieces; exiting at once would cut it). */
function emitAndExit (obj, code) {
  process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(code))
}

function crash (err) {
  emitAndExit({ exception: String((err && err.stack) || err) }, 1)
}

function usage (msg) {
  throw new Error('usage: ' + msg + ' (see the header of spdy_stream.js)')
}

// ---------------------------------------------------------------- upgrade

/* POSTs to URL asking for SPDY/3.1 with the given subprotocols, as client-go's
 * SpdyRoundTripper does. Resolves {socket, protocol} on 101, or
 * {httpStatus, body} on any other answer. */
function upgrade (url, protocols) {
  return new Promise((resolve, reject) => {
    const u = new URL(url)
    if (u.protocol !== 'http:') {
      reject(new Error('only http:// URLs are supported, got ' + url))
      return
    }
    const req = http.request({
      hostname: u.hostname,
      port: u.port || 80,
      path: u.pathname + u.search,
      method: 'POST',
      agent: false,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'SPDY/3.1',
        // An array is sent as one header line per value, in this order.
        'X-Stream-Protocol-Version': protocols,
        'Content-Length': '0'
      }
    })
    const timer = setTimeout(() => req.destroy(new Error('no HTTP answer within 60 s')), LIMIT_MS)
    req.on('upgrade', (res, socket, head) => {
      clearTimeout(timer)
      // Bytes the server sent right after the 101 (e.g. its SETTINGS) belong to SPDY.
      if (head && head.length) socket.unshift(head)
      socket.setNoDelay(true)
      const chosen = res.headers['x-stream-protocol-version']
      resolve({ socket, protocol: chosen === undefined ? null : chosen })
    })
    req.on('response', (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => {
        clearTimeout(timer)
        resolve({ httpStatus: res.statusCode, body: Buffer.concat(chunks).toString() })
      })
      res.on('error', reject)
    })
    req.on('error', (e) => { clearTimeout(timer); reject(e) })
    req.end()
  })
}

// ---------------------------------------------------------------- session

/* One SPDY/3.1 client session on an upgraded socket. */
class Session {
  constructor (socket) {
    this.socket = socket
    this.transportErrors = []
    this.streams = []
    this.closed = false
    // Set once the mode has what it waited for: errors after that (e.g. EPIPE
    // while answering the server's last RST_STREAMs) are teardown noise.
    this.settled = false
    this._closeWaiters = []
    this.conn = transport.connection.create(socket, { protocol: 'spdy', isServer: false })
    // EPIPE only says the server closed while we still wrote (e.g. spdy-transport
    // answering the server's last RST_STREAMs with its own): not news. A reset
    // is news unless the server had said GOAWAY or closed its side first.
    this.peerLeaving = false
    socket.on('end', () => { this.peerLeaving = true })
    this.conn.on('error', (e) => {
      if (e.code === 'EPIPE' || (this.peerLeaving && e.code === 'ECONNRESET')) return
      this.noteError('connection: ' + e.message)
    })
    // spdy-transport answers a SYN_REPLY that has no :status with RST_STREAM
    // PROTOCOL_ERROR and tells nobody; say so and stop waiting for that reply.
    this.pendingReplies = new Map()
    this.conn.on('frame', (f) => {
      if (f.type === 'GOAWAY') this.peerLeaving = true
      if (f.type !== 'HEADERS' || f.headers[':status'] !== undefined) return
      const noReply = this.pendingReplies.get(f.id)
      if (noReply) noReply()
    })
    socket.on('close', () => {
      this.closed = true
      for (const w of this._closeWaiters.splice(0)) w()
    })
    this.conn.start(3.1)
  }

  noteError (text) {
    if (!this.settled) this.transportErrors.push(text)
  }

  whenClosed () {
    return new Promise((resolve) => {
      if (this.closed) resolve()
      else this._closeWaiters.push(resolve)
    })
  }

  /* Creates a stream with these headers and resolves once the server's
   * SYN_REPLY arrived (client-go's CreateStream waits for it too), or null if
   * the connection closed first. The method is not GET because spdy-transport
   * half-closes GET streams in their SYN_STREAM (FLAG_FIN); client-go never
   * does, and stdin must stay writable. */
  open (name, headers) {
    const rec = {
      name,
      stream: null,
      chunks: [],
      replyStatus: null,
      fin: false,
      done: false,
      _doneWaiters: [],
      _dataWaiters: []
    }
    this.streams.push(rec)
    const finish = () => {
      if (rec.done) return
      rec.done = true
      for (const w of rec._doneWaiters.splice(0)) w()
    }
    return new Promise((resolve) => {
      if (this.closed) { finish(); resolve(null); return }
      const s = this.conn.request({ method: 'POST', path: '/', headers }, (err) => {
        if (err) this.noteError(name + ': ' + err.message)
      })
      rec.stream = s
      this.pendingReplies.set(s.id, () => {
        this.pendingReplies.delete(s.id)
        this.noteError(name + ': SYN_REPLY without :status (spdy-transport resets the stream with PROTOCOL_ERROR)')
        finish()
        resolve(null)
      })
      s.on('response', (status) => {
        this.pendingReplies.delete(s.id)
        rec.replyStatus = status
        resolve(rec)
      })
      s.on('data', (c) => {
        rec.chunks.push(c)
        for (const w of rec._dataWaiters.splice(0)) w()
      })
      s.on('end', () => { rec.fin = true; finish() })
      s.on('close', finish)
      s.on('error', (e) => this.noteError(name + ': ' + e.message))
      this.whenClosed().then(() => { finish(); resolve(null) })
    })
  }

  static done (rec) {
    return new Promise((resolve) => {
      if (!rec || rec.done) resolve()
      else rec._doneWaiters.push(resolve)
    })
  }

  static text (rec) {
    return rec ? Buffer.concat(rec.chunks).toString() : ''
  }

  /* client-go's teardown: reset the streams still open, GOAWAY, close. */
  async close () {
    this.settled = true
    if (this.closed) return
    for (const rec of this.streams) {
      if (rec.stream) rec.stream.abort()
    }
    this.conn.end()
    await Promise.race([this.whenClosed(), sleep(2000)])
    this.socket.destroy()
  }
}

function sleep (ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref())
}

/* Resolves true when `promise` did not settle within `ms`. */
function deadline (promise, ms) {
  let timer
  const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(true), ms) })
  return Promise.race([promise.then(() => false), timeout]).finally(() => clearTimeout(timer))
}

// ---------------------------------------------------------------- modes

function parseFlags (args, known) {
  const flags = {}
  const positional = []
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (!a.startsWith('--')) { positional.push(a); continue }
    const name = a.slice(2)
    if (!(name in known)) usage('unknown flag ' + a)
    if (known[name]) {
      if (i + 1 >= args.length) usage(a + ' needs a value')
      flags[name] = args[++i]
    } else {
      flags[name] = true
    }
  }
  return { flags, positional }
}

function protocolsFrom (flags, fallback) {
  return flags.protocols !== undefined ? flags.protocols.split(',').filter((p) => p) : fallback
}

function returncodeOf (status) {
  if (!status || typeof status !== 'object') return null
  if (status.status === 'Success') return 0
  if (status.status === 'Failure' && status.reason === 'NonZeroExitCode') {
    const causes = (status.details && status.details.causes) || []
    for (const c of causes) {
      if (c.reason === 'ExitCode') {
        const n = parseInt(c.message, 10)
        return Number.isNaN(n) ? null : n
      }
    }
  }
  return null
}

async function runExec (args) {
  const { flags, positional } = parseFlags(args, {
    stdin: true, 'stdin-file': true, 'no-stdout': false, 'no-stderr': false, tty: false, resize: true, protocols: true
  })
  if (positional.length !== 1) usage('exec URL [--stdin TEXT | --stdin-file PATH] [--no-stdout] [--no-stderr] [--tty] [--resize CxR] [--protocols a,b]')
  if (flags['stdin-file'] !== undefined) {
    if (flags.stdin !== undefined) usage('--stdin and --stdin-file exclude each other')
    flags.stdin = fs.readFileSync(flags['stdin-file'])
  }
  let size = null
  if (flags.resize !== undefined) {
    const m = /^(\d+)x(\d+)$/.exec(flags.resize)
    if (!m) usage('--resize COLSxROWS')
    size = { Width: +m[1], Height: +m[2] } // client-go's TerminalSize, JSON-encoded
  }
  const up = await upgrade(positional[0], protocolsFrom(flags, EXEC_PROTOCOLS))
  if (up.httpStatus !== undefined) return { http_status: up.httpStatus, body: up.body }

  const session = new Session(up.socket)
  const tty = !!flags.tty
  const v3plus = up.protocol === 'v3.channel.k8s.io' || up.protocol === 'v4.channel.k8s.io'
  const s = {}
  const work = (async () => {
    s.error = await session.open('error', { streamtype: 'error' })
    if (flags.stdin !== undefined) s.stdin = await session.open('stdin', { streamtype: 'stdin' })
    if (!flags['no-stdout']) s.stdout = await session.open('stdout', { streamtype: 'stdout' })
    if (!flags['no-stderr'] && !tty) s.stderr = await session.open('stderr', { streamtype: 'stderr' })
    if (tty && v3plus) s.resize = await session.open('resize', { streamtype: 'resize' })
    if (s.resize && size) s.resize.stream.write(JSON.stringify(size) + '\n')
    if (s.stdin) {
      s.stdin.stream.write(Buffer.from(flags.stdin))
      s.stdin.stream.end()
    }
    await Promise.all([s.error, s.stdout, s.stderr].map((r) => Session.done(r)))
  })()
  const timedOut = await deadline(Promise.race([work, session.whenClosed()]), LIMIT_MS)
  await session.close()

  const error = Session.text(s.error)
  let status = null
  if (error !== '') {
    try { status = JSON.parse(error) } catch (e) { status = null }
  }
  const fin = {}
  for (const rec of session.streams) fin[rec.name] = rec.fin
  return {
    protocol: up.protocol,
    stdout: Session.text(s.stdout),
    stderr: Session.text(s.stderr),
    error,
    status,
    returncode: returncodeOf(status),
    timeout: timedOut,
    fin,
    transport_errors: session.transportErrors
  }
}

async function runLeave (args) {
  const { flags, positional } = parseFlags(args, { protocols: true })
  if (positional.length !== 1) usage('leave URL')
  const up = await upgrade(positional[0], protocolsFrom(flags, EXEC_PROTOCOLS))
  if (up.httpStatus !== undefined) return { http_status: up.httpStatus, body: up.body }

  const session = new Session(up.socket)
  let stdout = null
  const work = (async () => {
    await session.open('error', { streamtype: 'error' })
    stdout = await session.open('stdout', { streamtype: 'stdout' })
    await session.open('stderr', { streamtype: 'stderr' })
    if (!stdout) return
    while (Session.text(stdout) === '' && !stdout.done) {
      await new Promise((resolve) => {
        stdout._dataWaiters.push(resolve)
        stdout._doneWaiters.push(resolve)
      })
    }
  })()
  const timedOut = await deadline(Promise.race([work, session.whenClosed()]), LIMIT_MS)
  const first = stdout && stdout.chunks.length ? stdout.chunks[0].toString() : ''
  // Go away without a word: no RST_STREAM, no GOAWAY; the kernel closes TCP.
  up.socket.destroy()
  return { protocol: up.protocol, first, timeout: timedOut }
}

/* One forwarded connection, as client-go's PortForwarder.handleConnection. */
async function forwardOne (session, port, requestId, data, halfClose) {
  const headers = { streamtype: 'error', port: String(port), requestid: String(requestId) }
  const error = await session.open('error/' + requestId, headers)
  if (!error) return { error: null, data: null }
  // "we're not writing to this stream": client-go closes it at once.
  error.stream.end()
  const dataRec = await session.open('data/' + requestId, Object.assign({}, headers, { streamtype: 'data' }))
  if (dataRec && data !== null) dataRec.stream.write(Buffer.from(data))
  // As client-go once its local connection reached its end of input: FIN on the data stream.
  if (dataRec && halfClose) dataRec.stream.end()
  await Promise.all([Session.done(dataRec), Session.done(error)])
  return { error, data: dataRec }
}

async function runPortForward (args) {
  const { flags, positional } = parseFlags(args, { protocols: true, 'half-close': false })
  if (positional.length < 3 || positional.length > 4) usage('portforward URL PORT DATA [COUNT] [--half-close]')
  const [url, port, data] = positional
  const count = positional.length === 4 ? parseInt(positional[3], 10) : 1
  if (!(count >= 1)) usage('COUNT must be a positive integer')
  const up = await upgrade(url, protocolsFrom(flags, PORTFORWARD_PROTOCOLS))
  if (up.httpStatus !== undefined) return { http_status: up.httpStatus, body: up.body }

  const session = new Session(up.socket)
  const pairs = []
  for (let i = 0; i < count; i++) pairs.push(forwardOne(session, port, i, data, !!flags['half-close']))
  // Each pair ends by itself; a closed connection ends them all.
  const timedOut = await deadline(Promise.all(pairs), LIMIT_MS)
  await session.close()
  // By name, so that pairs still waiting at the timeout report what they got.
  const byName = {}
  for (const rec of session.streams) byName[rec.name] = rec
  const ids = [...Array(count).keys()]
  return {
    protocol: up.protocol,
    received: ids.map((i) => Session.text(byName['data/' + i])),
    errors: ids.map((i) => Session.text(byName['error/' + i])),
    timeout: timedOut,
    transport_errors: session.transportErrors
  }
}

async function runPortForwardError (args) {
  const { flags, positional } = parseFlags(args, { protocols: true })
  if (positional.length !== 2) usage('portforward-error URL PORT')
  const [url, port] = positional
  const up = await upgrade(url, protocolsFrom(flags, PORTFORWARD_PROTOCOLS))
  if (up.httpStatus !== undefined) return { http_status: up.httpStatus, body: up.body }

  const session = new Session(up.socket)
  let error = null
  const work = (async () => {
    const headers = { streamtype: 'error', port: String(port), requestid: '0' }
    error = await session.open('error/0', headers)
    if (!error) return
    error.stream.end()
    await session.open('data/0', Object.assign({}, headers, { streamtype: 'data' }))
    await Session.done(error)
  })()
  const timedOut = await deadline(Promise.race([work, session.whenClosed()]), LIMIT_MS)
  await session.close()
  return { error: Session.text(error), protocol: up.protocol, timeout: timedOut }
}

// ---------------------------------------------------------------- record

/* One end of an in-memory socket pair; every write is logged, then handed to
 * the peer's readable side. */
class PipeEnd extends Duplex {
  constructor (dir, log) {
    super()
    this.dir = dir
    this.log = log
    this.peer = null
  }

  _write (chunk, enc, cb) {
    this.log.push({ dir: this.dir, chunk: Buffer.from(chunk) })
    this.peer.push(chunk)
    cb()
  }

  _read () {}

  _final (cb) {
    this.peer.push(null)
    cb()
  }
}

const FRAME_TYPES = {
  1: 'SYN_STREAM', 2: 'SYN_REPLY', 3: 'RST_STREAM', 4: 'SETTINGS', 6: 'PING', 7: 'GOAWAY', 8: 'HEADERS', 9: 'WINDOW_UPDATE'
}
const SETTING_NAMES = { 4: 'MAX_CONCURRENT_STREAMS', 7: 'INITIAL_WINDOW_SIZE' }

/* Splits one direction's bytes into frames as they arrive and labels them;
 * header blocks are inflated with that direction's single zlib context
 * (cumulatively: all blocks so far, minus what the earlier ones gave). */
class FrameLabeler {
  constructor () {
    this.pending = Buffer.alloc(0)
    this.blocks = []
    this.inflatedSoFar = 0
  }

  push (chunk) {
    this.pending = Buffer.concat([this.pending, chunk])
    const out = []
    while (this.pending.length >= 8) {
      const len = this.pending.readUIntBE(5, 3)
      if (this.pending.length < 8 + len) break
      const frame = this.pending.subarray(0, 8 + len)
      this.pending = this.pending.subarray(8 + len)
      out.push({ label: this.label(frame), hex: frame.toString('hex') })
    }
    return out
  }

  headerBlock (block) {
    this.blocks.push(block)
    const all = zlib.inflateSync(Buffer.concat(this.blocks), {
      dictionary: transport.protocol.spdy.dictionary[3],
      finishFlush: zlib.constants.Z_SYNC_FLUSH
    })
    const kv = all.subarray(this.inflatedSoFar)
    this.inflatedSoFar = all.length
    const n = kv.readUInt32BE(0)
    const headers = []
    let p = 4
    for (let i = 0; i < n; i++) {
      const kl = kv.readUInt32BE(p); p += 4
      const k = kv.subarray(p, p + kl).toString(); p += kl
      const vl = kv.readUInt32BE(p); p += 4
      const v = kv.subarray(p, p + vl).toString(); p += vl
      headers.push(k + ': ' + v)
    }
    return headers
  }

  label (frame) {
    const flags = frame[4]
    const len = frame.length - 8
    const body = frame.subarray(8)
    if (!(frame[0] & 0x80)) {
      const id = frame.readUInt32BE(0) & 0x7fffffff
      return 'DATA stream ' + id + (flags & 1 ? ' FIN' : '') + ', ' + len + ' bytes ' + JSON.stringify(body.toString())
    }
    const version = frame.readUInt16BE(0) & 0x7fff
    const type = frame.readUInt16BE(2)
    let label = (FRAME_TYPES[type] || ('type ' + type)) + ' (version ' + version + ', flags ' + flags + ')'
    if (type === 1 || type === 2 || type === 8) {
      const id = body.readUInt32BE(0) & 0x7fffffff
      const block = body.subarray(type === 1 ? 10 : 4)
      const headers = this.headerBlock(block)
      label += ' stream ' + id
      if (type === 1) label += ' associated ' + (body.readUInt32BE(4) & 0x7fffffff) + ' priority ' + (body[8] >> 5) + ' slot ' + body[9]
      if (flags & 1) label += ' FIN'
      label += ', header block ' + block.length + ' bytes {' + headers.join(', ') + '}'
    } else if (type === 4) {
      const n = body.readUInt32BE(0)
      const entries = []
      for (let i = 0; i < n; i++) {
        const idf = body.readUInt32BE(4 + 8 * i)
        const val = body.readUInt32BE(8 + 8 * i)
        const id = idf & 0xffffff
        entries.push((SETTING_NAMES[id] || 'id ' + id) + '=' + val + ' (entry flags ' + (idf >>> 24) + ')')
      }
      label += ' ' + entries.join(', ')
    } else if (type === 9) {
      label += ' stream ' + (body.readUInt32BE(0) & 0x7fffffff) + ' delta ' + body.readInt32BE(4)
    } else if (type === 6) {
      label += ' id ' + body.readUInt32BE(0)
    } else if (type === 3) {
      label += ' stream ' + (body.readUInt32BE(0) & 0x7fffffff) + ' status ' + body.readUInt32BE(4)
    } else if (type === 7) {
      label += ' last-good-stream ' + (body.readUInt32BE(0) & 0x7fffffff) + ' status ' + body.readUInt32BE(4)
    }
    return label
  }
}

function tick () {
  return new Promise((resolve) => setImmediate(resolve))
}

async function runRecord (args) {
  const { flags } = parseFlags(args, { compress: false })
  const compress = !!flags.compress
  const log = []
  const clientEnd = new PipeEnd('client->server', log)
  const serverEnd = new PipeEnd('server->client', log)
  clientEnd.peer = serverEnd
  serverEnd.peer = clientEnd

  const client = transport.connection.create(clientEnd, { protocol: 'spdy', isServer: false, headerCompression: compress })
  const server = transport.connection.create(serverEnd, { protocol: 'spdy', isServer: true, headerCompression: compress })
  const serverGot = {}
  server.on('stream', (st) => {
    st.respond(200, {})
    const type = st.headers.streamtype
    serverGot[type] = ''
    st.on('data', (c) => { serverGot[type] += c.toString() })
    st.resume()
  })

  // Both ends start before any byte moves (as each does right after the 101);
  // a server started later would take the version (3, not 3.1) from the
  // client's first frame instead.
  server.start(3.1)
  client.start(3.1)
  await tick()

  const request = (headers) => new Promise((resolve, reject) => {
    const st = client.request({ method: 'POST', path: '/', headers }, (err) => { if (err) reject(err) })
    st.on('response', () => resolve(st))
  })
  await request({ streamtype: 'error' })
  await tick()
  const stdin = await request({ streamtype: 'stdin' })
  await tick()
  stdin.write('hi\n')
  await tick()
  stdin.end()
  await tick()
  await new Promise((resolve) => client.ping(resolve))
  await tick()

  // Split each direction into frames in the order the bytes were written.
  const labelers = { 'client->server': new FrameLabeler(), 'server->client': new FrameLabeler() }
  const sequence = []
  let frameAligned = true
  for (const e of log) {
    const frames = labelers[e.dir].push(e.chunk)
    if (frames.length !== 1 || labelers[e.dir].pending.length !== 0) frameAligned = false
    for (const f of frames) sequence.push({ dir: e.dir, label: f.label, hex: f.hex })
  }
  return {
    note: 'spdy-transport 3.0.0, SPDY/3.1 (start(3.1) on both ends), header compression ' +
      (compress ? 'on (zlib default level)' : 'off (its default: zlib Z_NO_COMPRESSION, stored blocks)') +
      '. zlib with the SPDY/3 dictionary, ONE deflate context per direction (client->server and server->client), ' +
      'Z_SYNC_FLUSH after each header block: decode the header blocks of one direction in order.',
    write_calls: log.length,
    frames: sequence.length,
    one_frame_per_write: frameAligned,
    server_received: serverGot,
    sequence
  }
}

// ---------------------------------------------------------------- main

async function main () {
  const [mode, ...args] = process.argv.slice(2)
  const modes = {
    exec: runExec,
    leave: runLeave,
    portforward: runPortForward,
    'portforward-error': runPortForwardError,
    record: runRecord
  }
  if (!modes[mode]) usage('MODE is one of ' + Object.keys(modes).join(', '))
  const result = await modes[mode](args)
  emitAndExit(result, 0)
}

main().catch(crash)
