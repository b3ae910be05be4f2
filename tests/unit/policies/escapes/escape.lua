-- Escape attempts, chosen by action.input.attempt. Each one must fail (an error, so the
-- decision is a policy_error deny); an attempt that gets through returns allow "escaped".
local attempts = {
  io = function() return io.open("/etc/passwd") end,
  os_execute = function() return os.execute("true") end,
  os_exit = function() return os.exit(3) end,
  os_getenv = function() return os.getenv("HOME") end,
  os_remove = function() return os.remove("/nonexistent-aiorun") end,
  require = function() return require("io") end,
  package = function() return package.loaded end,
  debug = function() return debug.getinfo(1) end,
  load = function() return load("return 1") end,
  loadfile = function() return loadfile("/etc/passwd") end,
  dofile = function() return dofile("/etc/passwd") end,
  string_dump = function() return string.dump(decide) end,
  string_dump_method = function() return ("").dump(decide) end,
  collectgarbage = function() return collectgarbage("count") end,
  coroutine = function() return coroutine.create(decide) end,
  print = function() return print("escaped") end,
  warn = function() return warn("@on") end,
  randomseed = function() return math.randomseed(1) end,
  rawset_proxy = function() return rawset(string, "format", "evil") end,
  setmetatable_proxy = function() return setmetatable(string, {}) end,
  setmetatable_env = function() return setmetatable(_ENV, nil) end,
  getmetatable_proxy = function() getmetatable(string).__index.format = "evil" return true end,
  string_metatable = function() getmetatable("").__index.format = "evil" return true end,
  assign_library = function() string.format = "evil" return true end,
  assign_math = function() math.pi = 3 return true end,
  assign_os = function() os.time = nil return true end,
  table_insert_proxy = function() table.insert(os, "evil") return true end,
  gc_metamethod = function() return setmetatable({}, { __gc = function() end }) end,
}

function decide(action)
  local name = action.input.attempt
  if name == "check" then
    -- nothing any attempt did is visible
    assert(string.format("%d", 7) == "7", "string.format changed")
    assert(("x"):rep(3) == "xxx", "string methods changed")
    assert(("x").format == string.format, "string metatable changed")
    assert(math.pi > 3.14, "math.pi changed")
    assert(type(os.time) == "function", "os.time changed")
    assert(os.execute == nil and io == nil and debug == nil, "a library appeared")
    assert(rawget(string, 1) == nil and rawget(os, 1) == nil, "a proxy was written")
    assert(getmetatable("") == false and getmetatable(string) == false, "metatables exposed")
    return { verdict = "allow", rule = "clean", reason = "nothing leaked" }
  end
  local attempt = attempts[name]
  assert(attempt, "no such attempt")
  attempt()
  return { verdict = "allow", rule = "escaped", reason = name }
end
