-- wrk script of `make fuzz`: request i of the run gets seed FUZZ_SEED + i
-- (wrk runs with one thread, so i counts every request of the run).
-- luacheck: globals wrk request

local seed = tonumber(os.getenv("FUZZ_SEED")) or 1
local query = os.getenv("FUZZ_QUERY") or ""
local n = 0

function request()
    n = n + 1
    return wrk.format("GET", "/fuzz?seed=" .. (seed + n) .. query)
end
