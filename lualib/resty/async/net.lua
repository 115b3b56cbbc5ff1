-- resty.async.net: the socket operations of Rust tasks (resty_async::net),
-- carried out with cosockets by the light thread that waits for the task.
--
-- A cosocket belongs to the handler that made it, so a task's sockets
-- belong to its waiter. The waiter takes the ops the task queued (connect,
-- send, receive, keepalive, close; see src/net/lua.rs for their values),
-- carries them out in order, and hands the results back with rt.net_step,
-- which also runs the task. It connects and sends itself; it receives
-- itself too when the stream is half-duplex and nothing else is going on,
-- else a reader light thread per socket does, so that a read may wait
-- while a send goes out. When the wait ends, every socket not handed to
-- the keepalive pool is closed (a reader's socket by killing the reader).

local semaphore = require "ngx.semaphore"
local runtime = require "resty.async.runtime"
local driver = require "resty.async.driver"

local ngx = ngx
local select = select
local pairs = pairs
local next = next
local pcall = pcall
local unpack = unpack
local tostring = tostring
local setmetatable = setmetatable
local str_find = string.find
local math_ceil = math.ceil
local clear_tab = require "table.clear"
local tcp = ngx.socket.tcp
local ngx_now = ngx.now
local thread_spawn = ngx.thread.spawn
local thread_kill = ngx.thread.kill
local sema_new = semaphore.new
local kick = driver.kick
local forget = runtime.forget


local _M = {}


local CONNECT, SEND, RECV, KEEPALIVE, CLOSE, SPEC = 1, 2, 3, 4, 5, 6
-- values of each op, its kind included
local ARITY = { 3, 4, 4, 4, 2, 11 }
-- spare semaphores and waiter states
local MAX_SPARE = 256
local spare, nspare = {}, 0
local spare_ctx, nspare_ctx = {}, 0
-- ngx.now() and the timers of nginx read two clocks, each in whole
-- milliseconds: an op whose timeout was cut to end at the call's deadline
-- may time out up to a millisecond before ngx.now() reaches it. An op that
-- timed out this close to the deadline failed at it: the call timed out
-- (seconds).
local CLOCK_SLACK = 0.002
-- The longest semaphore wait (seconds): ngx_lua takes its timeout as a C
-- int of milliseconds. A longer wait is made of several.
local MAX_WAIT = (2 ^ 31 - 1) / 1000
-- A caller killed in a connect cannot be told from a live one while nginx
-- resolves its host (see Ctx:dead): one still in a connect this long
-- after its connect timeout, beyond nginx's default resolver_timeout, is
-- taken for dead (seconds).
local CONNECT_GRACE = 60


local function pack(...)
    return { n = select("#", ...), ... }
end


-- The waiter's state of one task: its sockets, queued ops, results not yet
-- handed to Rust, reader threads.
local Ctx = {}
Ctx.__index = Ctx


-- Called by resty.async.runtime's finished() for the driver's news of the
-- task: socket ops were queued (`ops`), or the task finished.
function Ctx:event(ops)
    if ops then
        self.ops_ready = true
    else
        self.finished = true
    end
    self:wake()
end


function Ctx:wake()
    if self.waiting then
        self.waiting = false
        self.sema:post(1)
    end
end


-- Whether ngx_lua killed the waiter (or ended its request): the driver's
-- sweep asks. Waiting on its semaphore, a killed waiter leaves it with
-- nobody waiting. In a socket op, nginx closes that socket when it kills
-- the waiter; close() called from another handler returns "closed" for
-- such a socket, and raises "bad request" for a live one before touching
-- it.
function Ctx:dead()
    if self.waiting then
        return self.sema:count() >= 0
    end
    local sock = self.busy
    if not sock then
        return false
    end
    local by = self.connecting
    if by then
        -- while nginx resolves the host, close() answers "closed" for a
        -- live socket too: there is no connection yet
        return ngx_now() > by
    end
    -- (raising costs: only an op already seen by the last sweep is asked)
    local op = self.nbusy
    if self.seen ~= op then
        self.seen = op
        return false
    end
    local ok, _, err = pcall(sock.close, sock)
    return ok and err == "closed"
end


-- Marks the waiter as blocked in an op on `sock` (nil: no longer); in a
-- connect, which a live caller leaves by `connect_until` (ngx.now()).
local function busy(ctx, sock, connect_until)
    ctx.busy = sock
    ctx.connecting = connect_until
    if sock then
        ctx.nbusy = ctx.nbusy + 1
    end
end


-- The sweep gave up on the task: readers close their sockets and stop.
function Ctx:abandon()
    self.over = true
end


local function add_result(ctx, sock, kind, value)
    if sock < 0 and value == "timeout" then
        ctx.op_timed_out = true
    elseif kind == SEND and sock > 0 then
        -- a send's confirmation: the task may be waiting for it to queue
        -- more of what it sends
        ctx.acked = true
    end
    local res, n = ctx.res, ctx.nres
    res[n + 1] = sock
    res[n + 2] = kind
    res[n + 3] = value
    ctx.nres = n + 3
end


-- rt.net_step with the results gathered so far.
local function deliver(ctx)
    local n = ctx.nres
    ctx.nres = 0
    ctx.acked = false
    local res = ctx.res
    if n == 0 then
        return ctx.step(ctx.id)
    elseif n == 3 then
        local a, b, c = res[1], res[2], res[3]
        res[1], res[2], res[3] = nil, nil, nil
        return ctx.step(ctx.id, a, b, c)
    end
    local r = { unpack(res, 1, n) }
    for i = 1, n do
        res[i] = nil
    end
    return ctx.step(ctx.id, unpack(r, 1, n))
end


-- Appends the `k` op values in `...` to the queue; a receive on socket
-- `own` (a reader's own) is not queued: its `max` is returned instead.
local function enqueue(ctx, own, k, ...)
    local q, t = ctx.q, ctx.qt
    local own_max
    local i = 1
    while i <= k do
        local kind, sock, a = select(i, ...)
        local n = ARITY[kind]
        if kind == RECV and sock == own then
            own_max = a
        else
            for j = 0, n - 1 do
                q[t + 1 + j] = (select(i + j, ...))
            end
            t = t + n
        end
        i = i + n
    end
    ctx.qt = t
    return own_max
end


-- Milliseconds until the call's deadline.
local function left_ms(ctx)
    return (ctx.deadline - ngx_now()) * 1000
end


-- Sets the timeouts of socket `i`, each cut to the time left when `cut`
-- (rounded up: a cut one ends at the call's deadline, not before).
local function set_timeouts(ctx, i, sock, cut)
    local spec = ctx.specs[i]
    local ct, st, rt = spec[4], spec[5], spec[6]
    if cut then
        local left = math_ceil(left_ms(ctx))
        if left < 1 then
            left = 1
        end
        if ct > left then ct = left end
        if st > left then st = left end
        if rt > left then rt = left end
    end
    local tmo, k = ctx.tmo, 3 * i
    if ct ~= tmo[k - 2] or st ~= tmo[k - 1] or rt ~= tmo[k] then
        sock:settimeouts(ct, st, rt)
        tmo[k - 2], tmo[k - 1], tmo[k] = ct, st, rt
    end
end


local function close_sock(ctx, i, sock)
    ctx.socks[i] = nil
    if ctx.reading[i] then
        -- killing the reader aborts its read and closes the socket
        ctx.reading[i] = nil
        ctx.nreading = ctx.nreading - 1
        thread_kill(ctx.readers[i])
    else
        sock:close()
    end
end


local reader


local function start_reader(ctx, i, sock, max)
    set_timeouts(ctx, i, sock, false)
    local th, err = thread_spawn(reader, ctx, i, sock, max)
    if not th then
        add_result(ctx, -i, RECV, "cannot start a reader thread: "
                   .. tostring(err))
        return
    end
    ctx.readers[i] = th
    local threads = ctx.threads
    threads[#threads + 1] = th
end


-- A SPEC op: what connects with spec `id` need, kept per runtime.
local function keep_spec(ctx, id, host, port, pool, size, ct, st, rt, sni,
                         verify)
    local specs = ctx.st.net_specs
    if not specs then
        specs = {}
        ctx.st.net_specs = specs
    end
    specs[id] = { host, port, { pool = pool, pool_size = size }, ct, st, rt,
                  sni, verify }
end


local function connect(ctx, i, spec)
    local host, port, opts, sni, verify = spec[1], spec[2], spec[3],
                                          spec[7], spec[8]
    local sock = tcp()
    ctx.specs[i] = spec
    set_timeouts(ctx, i, sock, true)
    local ok, err
    -- (only a host name is resolved: an address or a unix socket connects
    -- at once, and a killed caller's socket answers close() "closed")
    local connect_until
    if port and not str_find(host, "^[%d.]+$")
       and not str_find(host, ":", 1, true)
    then
        connect_until = ngx_now() + spec[4] / 1000 + CONNECT_GRACE
    end
    busy(ctx, sock, connect_until)
    if port then
        ok, err = sock:connect(host, port, opts)
        if not ok and str_find(err, "no resolver defined", 1, true) then
            -- no `resolver` in this location: getaddrinfo on the pool
            local addr
            busy(ctx, nil)
            addr, err = _M.resolve(ctx.st, host, ctx.deadline - ngx_now())
            if addr then
                busy(ctx, sock)
                ok, err = sock:connect(addr, port, opts)
            end
        end
    else
        ok, err = sock:connect(host, opts)
    end
    if ok and sni ~= nil and sock:getreusedtimes() == 0 then
        busy(ctx, sock)
        ok, err = sock:sslhandshake(false, sni or nil, verify)
        if not ok then
            err = "TLS handshake failed: " .. tostring(err)
            sock:close()
        end
    end
    busy(ctx, nil)
    if not ok then
        ctx.socks[i] = false
        add_result(ctx, -i, CONNECT, err)
        return
    end
    ctx.socks[i] = sock
    add_result(ctx, i, CONNECT, sock:getreusedtimes())
end


-- Reads on socket `i` here, with the timeouts cut to the call's deadline.
local function read_inline(ctx, i, sock, max)
    set_timeouts(ctx, i, sock, true)
    busy(ctx, sock)
    local data, err = sock:receiveany(max)
    busy(ctx, nil)
    if data then
        add_result(ctx, i, RECV, data)
    else
        add_result(ctx, -i, RECV, err)
    end
end


-- Carries out the queued ops, in order; but a half-duplex stream's
-- receive waits until the queue is empty (its protocol sends nothing
-- while it waits to receive), and is then done here if no other read goes
-- on and no send's confirmation is pending (else by a reader). Returns
-- false once the call's deadline has passed (an op of ours timed out at
-- it).
local function run_ops(ctx)
    local q = ctx.q
    local held, held_max  -- the half-duplex receive held back
    while true do
        if ctx.qh > ctx.qt then
            if not held then
                break
            end
            local i, sock = held, ctx.socks[held]
            held = nil
            if sock then
                -- Not here while a send's confirmation waits to be handed
                -- over: the task may have more of its request to send
                -- (beyond its send window), which the peer waits for
                -- before it answers.
                if ctx.nreading == 0 and not ctx.acked then
                    read_inline(ctx, i, sock, held_max)
                else
                    start_reader(ctx, i, sock, held_max)
                end
            end
        else
            local h = ctx.qh
            local kind, i = q[h], q[h + 1]
            local n = ARITY[kind]
            ctx.qh = h + n
            local sock = ctx.socks[i]
            if kind == CONNECT then
                connect(ctx, i, ctx.st.net_specs[q[h + 2]])
            elseif kind == SPEC then
                keep_spec(ctx, i, q[h + 2], q[h + 3], q[h + 4], q[h + 5],
                          q[h + 6], q[h + 7], q[h + 8], q[h + 9], q[h + 10])
            elseif sock then
                if kind == SEND then
                    set_timeouts(ctx, i, sock, true)
                    busy(ctx, sock)
                    local ok, err = sock:send(q[h + 2])
                    busy(ctx, nil)
                    if not ok then
                        add_result(ctx, -i, SEND, err)
                    elseif q[h + 3] then
                        add_result(ctx, i, SEND, true)
                    end
                elseif kind == RECV then
                    if q[h + 3] and not held then
                        held, held_max = i, q[h + 2]
                    else
                        start_reader(ctx, i, sock, q[h + 2])
                    end
                elseif kind == KEEPALIVE then
                    ctx.socks[i] = nil
                    if not sock:setkeepalive(q[h + 2], q[h + 3]) then
                        sock:close()
                    end
                elseif kind == CLOSE then
                    close_sock(ctx, i, sock)
                end
            end
            for j = h, h + n - 1 do
                q[j] = nil
            end
        end
        local now = ngx_now()
        if now >= ctx.deadline
           or ctx.op_timed_out and now >= ctx.deadline - CLOCK_SLACK
        then
            -- (an op cut short by the deadline failed with "timeout")
            return false
        end
    end
    ctx.qh, ctx.qt = 1, 0
    return true
end


-- Ends the wait: stops the readers (a reading one's socket closes),
-- closes the sockets left, and forgets the waiter.
local function cleanup(ctx)
    ctx.over = true
    local threads = ctx.threads
    local nthreads = #threads
    for k = 1, nthreads do
        -- a finished reader is a zombie until its parent waits for it or
        -- kills it: either way it goes
        thread_kill(threads[k])
    end
    ctx.nreading = 0
    local socks = ctx.socks
    if next(socks) then
        for _, sock in pairs(socks) do
            if sock then
                sock:close()
            end
        end
        clear_tab(socks)
    end
    local st, id = ctx.st, ctx.id
    if st.netids[id] then
        st.netids[id] = nil
        st.nets[id] = nil
        st.nnet = st.nnet - 1
    end
    local sema = ctx.sema
    if sema and nspare < MAX_SPARE and sema:count() == 0 then
        nspare = nspare + 1
        spare[nspare] = sema
    end
    -- Reused: no reader is left to hold it. Its tables, cleared, keep
    -- their room. (The queue and the results are emptied as they go.)
    if nspare_ctx < MAX_SPARE then
        if ctx.qt > 0 then
            clear_tab(ctx.q)
        end
        if ctx.nres > 0 then
            clear_tab(ctx.res)
        end
        clear_tab(ctx.specs)
        clear_tab(ctx.tmo)
        if nthreads > 0 then
            clear_tab(ctx.reading)
            clear_tab(ctx.readers)
            clear_tab(threads)
        end
        ctx.results = nil
        ctx.failed = nil
        ctx.sema = nil
        nspare_ctx = nspare_ctx + 1
        spare_ctx[nspare_ctx] = ctx
    end
end


local function timed_out(ctx)
    forget(ctx.st, ctx.id)
    cleanup(ctx)
    return nil, "timeout"
end


-- The results of a finished task, after its last ops (keepalive, close).
local function done(ctx, ...)
    run_ops(ctx)
    cleanup(ctx)
    return ...
end


local run, ended


-- What a step of the waiter returned: the ops, then the task's state.
local function after_step(ctx, state, ...)
    if state == true then
        return done(ctx, ...)
    end
    if state == nil then
        cleanup(ctx)
        return nil, ...
    end
    return run(ctx)
end


local function stepped(ctx, kicked, k, ...)
    if kicked then
        kick(ctx.st)
    end
    if k > 0 then
        enqueue(ctx, nil, k, ...)
    end
    return after_step(ctx, select(k + 1, ...))
end


run = function(ctx)
    while true do
        local results = ctx.results
        if results then
            -- a reader's step finished the task
            return done(ctx, unpack(results, 1, results.n))
        end
        if ctx.failed then
            cleanup(ctx)
            return nil, ctx.failed
        end
        if ctx.qh <= ctx.qt then
            -- (then the top again: a reader's step may end the task while
            -- an op of these waits, as when a response comes while the
            -- request is being sent; the results gathered meanwhile are
            -- of no use then)
            if not run_ops(ctx) then
                return timed_out(ctx)
            end
        elseif ctx.nres > 0 or ctx.ops_ready or ctx.finished then
            ctx.ops_ready = false
            return stepped(ctx, deliver(ctx))
        else
            local left = ctx.deadline - ngx_now()
            if left <= 0 then
                return timed_out(ctx)
            end
            local sema = ctx.sema
            if not sema then
                if nspare > 0 then
                    sema = spare[nspare]
                    spare[nspare] = nil
                    nspare = nspare - 1
                else
                    sema = sema_new(0)
                end
                ctx.sema = sema
            end
            ctx.waiting = true
            local ok, err = sema:wait(left < MAX_WAIT and left or MAX_WAIT)
            ctx.waiting = false
            if not ok and err == "timeout" and left < MAX_WAIT then
                -- (nginx's clock, which ngx_now reads, moves only between
                -- events: a wait shorter than its resolution returns at
                -- once)
                return timed_out(ctx)
            end
        end
    end
end


-- A reader's step: queues the ops but its own receive, whose max it
-- returns to go on reading; wakes the waiter for the rest.
local function reader_stepped(ctx, i, kicked, k, ...)
    if kicked then
        kick(ctx.st)
    end
    local qt = ctx.qt
    local max
    if k > 0 then
        max = enqueue(ctx, i, k, ...)
    end
    local state = select(k + 1, ...)
    if state == true then
        ctx.results = pack(select(k + 2, ...))
        ctx:wake()
    elseif state == nil then
        ctx.failed = select(k + 2, ...)
        ctx:wake()
    elseif ctx.qt > qt then
        ctx:wake()
    end
    return max
end


local function read_loop(ctx, i, sock, max)
    while max do
        ctx.reading[i] = true
        ctx.nreading = ctx.nreading + 1
        local data, err = sock:receiveany(max)
        ctx.reading[i] = nil
        ctx.nreading = ctx.nreading - 1
        if ctx.over or ctx.socks[i] ~= sock then
            -- the wait ended (or the socket was closed) meanwhile
            if ctx.socks[i] == sock then
                ctx.socks[i] = nil
                sock:close()
            end
            return
        end
        if data then
            add_result(ctx, i, RECV, data)
        else
            add_result(ctx, -i, RECV, err)
        end
        max = reader_stepped(ctx, i, deliver(ctx))
    end
end


reader = function(ctx, i, sock, max)
    local ok, err = pcall(read_loop, ctx, i, sock, max)
    if not ok then
        ctx.failed = "reader thread failed: " .. tostring(err)
        ctx:wake()
    end
end


-- The address of `host` from getaddrinfo on the blocking pool (for a
-- location without `resolver`); set by resty.async, which owns waiting.
_M.resolve = nil


local function first_step(ctx)
    return stepped(ctx, deliver(ctx))
end


-- What the wait returned; after a Lua error (a bug, a cosocket misuse),
-- the task is cancelled and its sockets closed before the error goes on.
ended = function(ctx, ok, ...)
    if ok then
        return ...
    end
    if not ctx.over then
        forget(ctx.st, ctx.id)
        cleanup(ctx)
    end
    error((...), 0)
end


-- Carries out the socket ops of task `id` of runtime `st` until it
-- finishes; returns its results (or nil, "timeout" after `timeout`
-- seconds). `k, ...`: the ops its raw call returned, if any; the waiter
-- asks for them otherwise.
function _M.wait(st, id, timeout, k, ...)
    local ctx
    if nspare_ctx > 0 then
        ctx = spare_ctx[nspare_ctx]
        spare_ctx[nspare_ctx] = nil
        nspare_ctx = nspare_ctx - 1
    else
        ctx = setmetatable({
            q = {}, res = {}, socks = {}, specs = {}, tmo = {},
            reading = {}, readers = {}, threads = {},
        }, Ctx)
    end
    ctx.st = st
    ctx.id = id
    ctx.step = st.rt.net_step
    ctx.deadline = ngx_now() + timeout
    ctx.qh, ctx.qt, ctx.nres, ctx.nreading = 1, 0, 0, 0
    ctx.waiting, ctx.over, ctx.finished, ctx.ops_ready = false, false, false,
                                                         false
    ctx.busy, ctx.nbusy, ctx.seen, ctx.connecting = nil, 0, nil, nil
    ctx.op_timed_out = false
    ctx.acked = false
    st.netids[id] = true
    st.nets[id] = ctx
    st.nnet = st.nnet + 1
    if k then
        enqueue(ctx, nil, k, ...)
        return ended(ctx, pcall(run, ctx))
    end
    return ended(ctx, pcall(first_step, ctx))
end


return _M
