-- The fuzzer's handlers (`make fuzz`, t/fuzz/run.sh): each request of
-- /fuzz?seed=N makes random calls of every function of `resty.async` and of
-- `resty_async_fixtures`, with random arguments, in random ways (a timeout
-- of its own, a task that is cancelled or not, a light thread that is
-- killed or waited, a C-call boundary, an ngx.timer callback, a handle kept
-- for a later request). Every choice comes from a PRNG seeded by N, so that
-- a request can be replayed with the same choices.

local async = require "resty.async"

local ngx = ngx
local type = type
local pcall = pcall
local pairs = pairs
local select = select
local unpack = unpack
local tostring = tostring
local tonumber = tonumber
local getmetatable = getmetatable
local collectgarbage = collectgarbage
local table_sort = table.sort
local table_concat = table.concat
local string_gsub = string.gsub
local string_rep = string.rep
local timer_at = ngx.timer.at
local thread_spawn = ngx.thread.spawn
local thread_wait = ngx.thread.wait
local thread_kill = ngx.thread.kill
local ngx_sleep = ngx.sleep
local worker_pid = ngx.worker.pid


local _M = {}

-- Longest timeout (seconds) the fuzzer gives with_timeout or task:wait:
-- every call must end soon after the configured timeout (0.5 s), so that a
-- request makes its calls in a few seconds.
local MAX_WAIT = 0.5
-- Task handles kept for later requests (older ones are dropped, for the
-- GC to collect).
local MAX_KEPT = 64
-- Calls a request makes unless its URI says otherwise.
local CALLS = 20
-- Calls an ngx.timer callback makes (at most).
local TIMER_CALLS = 3

local base_dir

-- Filled by load(), in the first request of each worker: the fixtures module
-- is required there, in a request's coroutine, as a user's handler would.
local fixtures
local FUNCS        -- { name = ..., f = ... } of every function under test
local NAME_OF = {}  -- function -> its name in FUNCS

-- Handles of tasks spawned by earlier requests, used by later ones.
local kept = {}
local nkept = 0

-- Requests and timer callbacks running now (the stats handler waits for
-- them to end).
local active = 0
local timers = 0

-- Errors raised by the calls: message (digits folded) -> count; and errors
-- that were not strings (the library's contract says they are).
local errors = {}
local nonstring = {}


-- Park-Miller PRNG (exact in doubles). One state per request, thread and
-- timer callback, so that interleaving does not change the choices. It
-- carries the list of functions to call and the tracing flag of the
-- request, and the name of its coroutine in traces.
local function rng(seed, funcs, trace, tag)
    return { seed % 2147483646 + 1, funcs = funcs, trace = trace, tag = tag }
end


-- A number from 1 to n.
local function rand(r, n)
    local x = r[1] * 48271 % 2147483647
    r[1] = x
    return x % n + 1
end


local BIG = string_rep("x", 70000)

local function plain_fn(...)
    return ...
end

-- The argument values; 1 (nil), 12 (a fresh table) and 13 (a function)
-- are made by value(). 18 and 19: this nginx's address and a path it
-- serves, for the functions that open network streams (set by load()).
local NVALUES = 19
local CONST = {
    [2] = true, [3] = false, [4] = 0, [5] = -1, [6] = 0.0001, [7] = 1e308,
    [8] = 0 / 0, [9] = "", [10] = "x", [11] = BIG, [14] = ngx.null,
    [15] = 2 ^ 53, [16] = -0.0, [17] = 3, [19] = "/ping",
}


local function value(r)
    local k = rand(r, NVALUES)
    if k == 1 then
        return nil
    elseif k == 12 then
        return {}
    elseif k == 13 then
        -- a plain Lua function, or one of the functions under test (so that
        -- spawn and with_timeout get the ones they expect, too)
        local funcs = r.funcs
        local fn = funcs[rand(r, #funcs + 1)]
        return fn and fn.f or plain_fn
    end
    return CONST[k]
end


-- Arguments that the fuzzer does not pass: a number of milliseconds that
-- keeps a std::thread or a pool thread busy for up to a minute (the
-- fixtures' cap), longer than a request of the fuzzer may take, or that
-- blocks the worker itself (every request waits then). (Sizes are passed
-- as they come: the fixtures refuse large ones.) Position -> largest
-- number allowed; a larger one becomes 3.
local CAPS = {
    block_ms = { 500 },
    unblock_ms = { 500 },
    drop_panics_result = { 500 },
    sleep_after_block = { 20 },
    guarded_thread_wait = { 500 },
    mlua_sleep = { 500 },
    mlua_sleep_raw = { 500 },
    double_on_thread = { [2] = 500 },
}

-- Functions whose arguments start with a timeout (seconds) and a function
-- called with the rest.
local TIMEOUT_FIRST = { with_timeout = true, ["task:wait"] = true }


-- `v`, or `instead` if `v` is a number above `max`.
local function cap_number(v, max, instead)
    if type(v) == "number" and v > max then
        return instead
    end
    return v
end


-- Applies CAPS to the arguments `args[from..n]` of function `name`.
local function cap_args(name, args, from, n)
    local caps = CAPS[name]
    if not caps then
        return
    end
    for pos, max in pairs(caps) do
        local i = from + pos - 1
        if i <= n then
            args[i] = cap_number(args[i], max, 3)
        end
    end
end


-- Options of configure() after start: accepted, refused (the runtimes run
-- already) and invalid ones. Left out: a timeout above MAX_WAIT, valid but
-- it would make every later call wait that long.
local function config_options(r)
    local k = rand(r, 24)
    if k == 1 then return { timeout = 0.5 }
    elseif k == 2 then return { base_dir = base_dir }
    elseif k == 3 then return { timeout = 0.5, base_dir = base_dir }
    elseif k == 4 then return {}
    elseif k == 5 then return { threads = 2 }
    elseif k == 6 then return { max_queue = 16 }
    elseif k == 7 then return { pool_nice = 5 }
    elseif k == 8 then return { pool_cpus = { 0 } }
    elseif k == 9 then return { base_dir = "/nonexistent/fuzz" }
    elseif k == 10 then return { threads = 2 ^ 20 }
    elseif k == 11 then return { timeout = -1 }
    elseif k == 12 then return { timeout = 0 / 0 }
    elseif k == 13 then return { timeout = 1 / 0 }
    elseif k == 14 then return { timeout = "soon" }
    elseif k == 15 then return { threads = 0 }
    elseif k == 16 then return { threads = 1.5 }
    elseif k == 17 then return { max_queue = -1 }
    elseif k == 18 then return { pool_nice = 20 }
    elseif k == 19 then return { pool_cpus = { -1 } }
    elseif k == 20 then return { pool_cpus = { 5000 } }
    elseif k == 21 then return { pool_cpus = { 0 / 0 } }
    elseif k == 22 then return { pool_cpus = {} }
    elseif k == 23 then return { bogus = 1 }
    end
    return { 2 }
end


-- A task handle for task:wait / task:cancel: one of this request's, a kept
-- one (of an earlier request), or anything else.
local function some_task(r, mine)
    local k = rand(r, 4)
    if k == 1 and #mine > 0 then
        return mine[rand(r, #mine)]
    elseif k == 2 and nkept > 0 then
        return kept[rand(r, nkept)]
    elseif k == 3 then
        return value(r)
    end
    local ok, t = pcall(async.spawn, async.sleep, 0.001 * rand(r, 5))
    if ok then
        mine[#mine + 1] = t
        return t
    end
    return nil
end


-- A random call: its name, the function and the arguments (args.n of
-- them).
local function pick_call(r, mine)
    local funcs = r.funcs
    local fn = funcs[rand(r, #funcs)]
    local name = fn.name
    local args = {}
    local n = rand(r, 4) - 1
    for i = 1, n do
        args[i] = value(r)
    end
    if name == "configure" and rand(r, 2) == 1 then
        args[1] = config_options(r)
        if n == 0 then
            n = 1
        end
    end
    if name == "task:wait" or name == "task:cancel" then
        -- the handle is the first argument (the method's self)
        n = n + 1
        for i = n, 2, -1 do
            args[i] = args[i - 1]
        end
        args[1] = some_task(r, mine)
    end

    local from = 1
    if TIMEOUT_FIRST[name] then
        local i = name == "task:wait" and 2 or 1
        if i <= n then
            args[i] = cap_number(args[i], MAX_WAIT, MAX_WAIT)
        end
        from = i + 1
    end
    if name == "with_timeout" or name == "spawn" then
        local target = NAME_OF[args[from]]
        if target then
            cap_args(target, args, from + 1, n)
        end
    else
        cap_args(name, args, from, n)
    end
    args.n = n
    return name, fn.f, args
end


local function note_error(name, err)
    if type(err) ~= "string" then
        local key = name .. ": " .. type(err)
        nonstring[key] = (nonstring[key] or 0) + 1
        return
    end
    -- one entry per kind of message: numbers, addresses and paths vary
    local key = name .. ": " .. err:sub(1, 100):gsub("0x%x+", "0x?")
                                              :gsub("%d+", "N")
    errors[key] = (errors[key] or 0) + 1
end


-- Calls f with args under pcall; records a raised error.
local function protected(name, f, args)
    local ok, err = pcall(f, unpack(args, 1, args.n))
    if not ok then
        note_error(name, err)
    end
    return ok
end


-- `args` with the given values in front (a new table; args.n counts).
local function prepend(args, ...)
    local k = select("#", ...)
    local out = { ... }
    for i = 1, args.n do
        out[k + i] = args[i]
    end
    out.n = k + args.n
    return out
end


local function keep(r, task)
    if nkept < MAX_KEPT then
        nkept = nkept + 1
        kept[nkept] = task
    else
        -- the old handle is dropped: the GC collects it later
        kept[rand(r, MAX_KEPT)] = task
    end
end


local call_way


-- Kills or waits for light thread `th`.
local end_thread


-- A short description of value `v` for traces.
local function describe(v)
    local t = type(v)
    if t == "string" then
        return #v > 20 and "<" .. #v .. " bytes>" or ("%q"):format(v)
    elseif t == "number" then
        return ("%.17g"):format(v)
    elseif t == "function" then
        return "function " .. (NAME_OF[v] or "plain_fn")
    elseif t == "table" then
        return getmetatable(v) and "task" or "{}"
    end
    return tostring(v)
end


-- With ?trace=1: logs (at warn) each call before it is made.
local function trace(r, what, name, args)
    if not r.trace then
        return
    end
    local out = {}
    for i = 1, args and args.n or 0 do
        out[i] = describe(args[i])
    end
    ngx.log(ngx.WARN, "fuzz ", r.tag, ": ", what, " ", name or "", "(",
            table_concat(out, ", "), ")")
end


-- A light thread's body: one call in the ways that do not need the
-- request's own state.
local function thread_body(seed, funcs, tracing)
    local r = rng(seed, funcs, tracing, "thread " .. seed)
    local mine = {}
    call_way(r, mine, nil, rand(r, 4))
    return true
end


end_thread = function(r, th)
    if rand(r, 2) == 1 then
        trace(r, "thread", "kill (later)")
        thread_kill(th)
    else
        trace(r, "thread", "wait (later)")
        thread_wait(th)
    end
end


local function timer_body(premature, seed, funcs, tracing)
    if premature then
        timers = timers - 1
        return
    end
    local seeds = ngx.shared.fuzz_seeds
    local key = "t" .. seed
    seeds:set(key, worker_pid())
    local r = rng(seed, funcs, tracing, "timer " .. seed)
    local mine = {}
    local threads = {}
    for _ = 1, rand(r, TIMER_CALLS) do
        call_way(r, mine, threads, rand(r, 5))
    end
    for i = 1, #threads do
        end_thread(r, threads[i])
    end
    seeds:delete(key)
    timers = timers - 1
end


-- Ways of making a call; the last two are C-call boundaries.
local WITH_TIMEOUT, SPAWN, PCALL, KEEP, THREAD, TIMER, USE_KEPT, GSUB, SORT =
    1, 2, 3, 4, 5, 6, 7, 8, 9
local WAY_NAMES = {
    "with_timeout", "spawn", "pcall", "keep", "thread", "timer", "use_kept",
    "gsub", "sort",
}
local NWAYS = 9
local NWAYS_NO_CCALL = 7


-- Makes one call in way `way`. `threads` collects the light threads the
-- caller must kill or wait later (nil: wait for them here).
call_way = function(r, mine, threads, way)
    if way == USE_KEPT then
        if nkept == 0 then
            way = PCALL
        else
            local i = rand(r, nkept)
            local task = kept[i]
            kept[i] = kept[nkept]
            kept[nkept] = nil
            nkept = nkept - 1
            if rand(r, 3) == 1 then
                trace(r, "use_kept", "cancel")
                protected("kept:cancel", task.cancel, { task, n = 1 })
            end
            local timeout = rand(r, 2) == 1 and 0.001 * rand(r, 500) or nil
            trace(r, "use_kept", "wait", { timeout, n = 1 })
            protected("kept:wait", task.wait, { task, timeout, n = 2 })
            return
        end
    end

    if way == THREAD then
        trace(r, "thread", "spawn")
        local th = thread_spawn(thread_body, rand(r, 2147483646), r.funcs,
                                r.trace)
        if threads and rand(r, 2) == 1 then
            threads[#threads + 1] = th
        elseif rand(r, 2) == 1 then
            if rand(r, 2) == 1 then
                -- (not 0: ngx.sleep(0) logs a warning on this nginx)
                ngx_sleep(0.001 * rand(r, 5))
            end
            trace(r, "thread", "kill")
            thread_kill(th)
        else
            trace(r, "thread", "wait")
            thread_wait(th)
        end
        return
    end

    if way == TIMER then
        trace(r, "timer", "at")
        local ok = timer_at(0.001 * (rand(r, 50) - 1), timer_body,
                            rand(r, 2147483646), r.funcs, r.trace)
        if ok then
            timers = timers + 1
        end
        return
    end

    local name, f, args = pick_call(r, mine)
    trace(r, WAY_NAMES[way], name, args)

    if way == WITH_TIMEOUT then
        -- a timeout under 10 ms
        local t = 0.0001 * rand(r, 99)
        protected(name, async.with_timeout, prepend(args, t, f))

    elseif way == SPAWN or way == KEEP then
        local sargs = prepend(args, f)
        local ok, task = pcall(async.spawn, unpack(sargs, 1, sargs.n))
        if not ok then
            note_error(name, task)
            return
        end
        if way == KEEP then
            keep(r, task)
            return
        end
        mine[#mine + 1] = task
        if rand(r, 2) == 1 then
            protected("task:cancel", task.cancel, { task, n = 1 })
        end
        local timeout = rand(r, 2) == 1 and 0.001 * rand(r, 500) or nil
        protected("task:wait", task.wait, { task, timeout, n = 2 })

    elseif way == GSUB then
        -- a callback of a C function: it cannot yield
        local ok, err = pcall(string_gsub, "ab", "%w", function()
            protected(name, f, args)
            return ""
        end, 1)
        if not ok then
            note_error("gsub", err)
        end

    elseif way == SORT then
        local called = false
        local ok, err = pcall(table_sort, { 2, 1, 3 }, function(a, b)
            if not called then
                called = true
                protected(name, f, args)
            end
            return a < b
        end)
        if not ok then
            note_error("sort", err)
        end

    else
        protected(name, f, args)
    end
end


-- Fixtures not called: spin_forever keeps the worker's CPU busy until its
-- call's timeout, by design (t/030-module.t tests it); drop_panics makes
-- an object whose collection aborts the worker, by design (mlua's __gc
-- cannot unwind: t/090-objects.t tests it).
local NOT_FUZZED = { spin_forever = true, drop_panics = true }


-- Adds the functions of module table `mod` to `list`.
local function add_funcs(list, mod)
    for name, f in pairs(mod) do
        if type(f) == "function" and not NOT_FUZZED[name] then
            list[#list + 1] = { name = name, f = f }
        end
    end
end


-- The fixtures module, the list of functions and the runtimes: made in the
-- first request of the worker. (The runtimes are started here, so that a
-- configure() with another base_dir is refused, as after start.)
local function load()
    if FUNCS then
        return
    end
    fixtures = require "resty_async_fixtures"
    CONST[18] = "127.0.0.1:" .. ngx.var.server_port
    local list = {}
    add_funcs(list, async)
    add_funcs(list, fixtures)
    table_sort(list, function(a, b) return a.name < b.name end)
    local Task = getmetatable(async.spawn(async.sleep, 0))
    list[#list + 1] = { name = "task:cancel", f = Task.cancel }
    list[#list + 1] = { name = "task:wait", f = Task.wait }
    for _, fn in pairs(list) do
        NAME_OF[fn.f] = fn.name
    end
    async.sleep(0.001)
    fixtures.echo_after(1, 1)
    FUNCS = list
end


function _M.init(dir)
    base_dir = dir
end


-- FUNCS without the functions named in `skip` (comma-separated).
local skipped = {}
local function funcs_without(skip)
    if not skip or skip == "" then
        return FUNCS
    end
    local list = skipped[skip]
    if not list then
        local names = {}
        for name in skip:gmatch("[^,]+") do
            names[name] = true
        end
        list = {}
        for _, fn in pairs(FUNCS) do
            if not names[fn.name] then
                list[#list + 1] = fn
            end
        end
        skipped[skip] = list
    end
    return list
end


-- content_by_lua of /fuzz?seed=N[&ccall=0][&calls=20][&skip=f,g]
function _M.request()
    local args = ngx.req.get_uri_args()
    local seed = tonumber(args.seed) or 0
    local ccall = args.ccall ~= "0"
    local calls = tonumber(args.calls) or CALLS
    local seeds = ngx.shared.fuzz_seeds
    seeds:set("r" .. seed, worker_pid())
    seeds:incr("started", 1, 0)
    ngx.ctx.fuzz_seed = seed
    active = active + 1

    load()
    local r = rng(seed, funcs_without(args.skip), args.trace == "1",
                  "request " .. seed)
    local mine = {}
    local threads = {}
    local nways = ccall and NWAYS or NWAYS_NO_CCALL
    for _ = 1, calls do
        call_way(r, mine, threads, rand(r, nways))
        -- now and then, end one of the light threads left running
        if #threads > 0 and rand(r, 4) == 1 then
            local th = threads[#threads]
            threads[#threads] = nil
            end_thread(r, th)
        end
    end
    for i = #threads, 1, -1 do
        end_thread(r, threads[i])
    end
    if rand(r, 10) == 1 then
        trace(r, "collectgarbage", "")
        collectgarbage()
    end
    ngx.say("ok ", seed)
end


-- log_by_lua of /fuzz: also runs for requests ngx_lua ended (client abort).
function _M.done()
    local seed = ngx.ctx.fuzz_seed
    if seed then
        ngx.shared.fuzz_seeds:delete("r" .. seed)
        active = active - 1
    end
end


local function sorted_counts(t, limit)
    local list = {}
    for k, v in pairs(t) do
        list[#list + 1] = { k, v }
    end
    table_sort(list, function(a, b) return a[2] > b[2] end)
    local out = {}
    for i = 1, limit and limit < #list and limit or #list do
        out[i] = list[i][2] .. "  " .. list[i][1]
    end
    return out
end


-- /stats: waits for the requests and timer callbacks to end (at most
-- `wait` seconds), drops the kept handles, collects garbage, gives the
-- driver time to sweep, then prints stats() and the fuzzer's counters.
function _M.stats()
    local st0 = async.stats()
    local before = st0.in_flight
    local waited = 0
    local max_wait = tonumber(ngx.var.arg_wait) or 15
    while (active > 0 or timers > 0) and waited < max_wait do
        ngx_sleep(0.1)
        waited = waited + 0.1
    end
    local busy = active .. " requests, " .. timers .. " timers"
    -- before the kept handles are dropped: they may hold tasks (pending,
    -- or finished with results not taken), which count as in flight
    local owning = 0
    for i = 1, nkept do
        if kept[i].id then
            owning = owning + 1
        end
    end
    local before_drop = async.stats().in_flight
    for i = 1, nkept do
        local task = kept[i]
        kept[i] = nil
        pcall(task.cancel, task)
    end
    nkept = 0
    collectgarbage()
    collectgarbage()
    ngx_sleep(0.3)
    local st = async.stats()
    local seeds = ngx.shared.fuzz_seeds
    ngx.say("in_flight_at_call=", before)
    ngx.say("still_running_after_wait=", busy)
    ngx.say("in_flight_before_drop=", before_drop, " (kept handles owning ",
            "a task: ", owning, ")")
    local keys = {}
    for k, v in pairs(st) do
        keys[#keys + 1] = k .. "=" .. tostring(v)
    end
    table_sort(keys)
    ngx.say("stats: ", table_concat(keys, " "))
    ngx.say("in_flight=", st.in_flight)
    ngx.say("worker=", worker_pid())
    ngx.say("started=", seeds:get("started") or 0)
    local left = {}
    for _, k in pairs(seeds:get_keys(0)) do
        if k ~= "started" then
            left[#left + 1] = k .. "@" .. tostring(seeds:get(k))
        end
    end
    table_sort(left)
    ngx.say("unfinished=", table_concat(left, " "))
    local ns = sorted_counts(nonstring)
    ngx.say("nonstring_errors=", #ns)
    for _, line in pairs(ns) do
        ngx.say("  ", line)
    end
    local es = sorted_counts(errors, tonumber(ngx.var.arg_errors) or 25)
    ngx.say("errors (count, function: message):")
    for _, line in pairs(es) do
        ngx.say("  ", line)
    end
end


return _M
