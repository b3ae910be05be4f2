-- Differential test of the sandbox's string.find/match/gmatch/gsub: run_cases() must give the
-- same text in the sandbox as in stock Lua (the test runs this file in both).

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

local function try(f, ...)
  local r = table.pack(pcall(f, ...))
  if not r[1] then
    local msg = tostring(r[2])
    return "ERR " .. (msg:gsub("^[^:]*:%d+: ", ""))
  end
  local out = {}
  for i = 2, r.n do out[#out + 1] = show(r[i]) end
  return table.concat(out, ",")
end

local function gm(s, p, init)
  local out = {}
  for a, b in string.gmatch(s, p, init) do
    out[#out + 1] = show(a) .. "|" .. show(b)
    if #out > 50 then break end
  end
  return table.concat(out, ";")
end

local cases = {
  -- find
  { string.find, "hello world", "o w" },
  { string.find, "hello world", "o", 6 },
  { string.find, "hello world", "o", -5 },
  { string.find, "hello world", "o", -100 },
  { string.find, "hello world", "o", 0 },
  { string.find, "hello", "l+" },
  { string.find, "hello", "^h" },
  { string.find, "hello", "^e" },
  { string.find, "hello", "o$" },
  { string.find, "hello$", "o$" },
  { string.find, "a$b", "$b" },
  { string.find, "hello", "", 10 },
  { string.find, "hello", "", 6 },
  { string.find, "", "" },
  { string.find, "", "^$" },
  { string.find, "a.b", ".", 1, true },
  { string.find, "a.b", "%." },
  { string.find, "a+b", "+", 1, true },
  { string.find, "key = value", "(%w+)%s*=%s*(%w+)" },
  { string.find, "hello", "()ll()" },
  { string.find, "THE (quick) fox", "%((%a+)%)" },
  { string.find, "f(a(b)c)d", "%b()" },
  { string.find, "f(a(b)c", "%b()" },
  { string.find, "THE (quick) fox", "%f[%a]%a+", 5 },
  { string.find, "hello  world", "%s+" },
  { string.find, "abc", "[a-b]+" },
  { string.find, "abc", "[^a]+" },
  { string.find, "a]b", "[]]" },
  { string.find, "a]b", "[^]]+" },
  { string.find, "a-b", "[a-]+" },
  { string.find, "x^y", "[%^]" },
  { string.find, "x^y", "[b^]" },
  { string.find, "aaab", "a-b" },
  { string.find, "aaab", "a*b" },
  { string.find, "b", "a?b" },
  { string.find, "ab", "a?b" },
  { string.find, "abcabc", "(abc)%1" },
  { string.find, "abcabd", "(abc)%1" },
  { string.find, "hello", "(h)(e)(l)(l)(o)" },
  { string.find, "\200\201x", "[\128-\255]+" },
  { string.find, "A1_b2", "[%w_]+" },
  { string.find, "-", "[%a-z]" },
  { string.find, "m", "[%a-z]" },
  { string.find, "x", "%" },
  { string.find, "x", "[a" },
  { string.find, "x", "[a%" },
  { string.find, "x", "(x" },
  { string.find, "x", "x)" },
  { string.find, "x", "%1" },
  { string.find, "x", "%0" },
  { string.find, "x", "(x)%2" },
  { string.find, "x", "%b" },
  { string.find, "x", "%bx" },
  { string.find, "x", "%fx" },
  { string.find, "x", string.rep("()", 33) },
  { string.find, string.rep("a", 300), string.rep("a?", 300) },
  { string.find, "x", string.rep("(", 40) .. "x" .. string.rep(")", 40) },
  { string.find, nil, "x" },
  { string.find, "hello", "l", 1.5 },
  { string.find, 12345, 3 },
  { string.find, "a\0b", "%z" },
  { string.find, "a\0b", "\0" },
  { string.find, "a\0b", "[\0]" },
  { string.find, "x = 1; y = 22", "(%a)%s*=%s*(%d+)", 6 },
  { string.find, "aXb", "%u" },
  { string.find, "aXb", "%U+" },
  { string.find, "tab\there", "%c" },
  { string.find, "1.5e10", "^[+-]?%d+%.?%d*[eE]?[+-]?%d*$" },
  { string.find, "foo.bar", "%.(.*)$" },
  { string.find, "  x", "%S" },
  { string.find, "ab", "a()" },
  { string.find, "aaa", "()a-()" },
  { string.find, "THEN", "%f[%w]%w+%f[%W]" },
  { string.find, "x", "%f[%w]" },
  { string.find, "", "%f[%z]" },
  -- match
  { string.match, "hello world", "%w+" },
  { string.match, "  trim me  ", "^%s*(.-)%s*$" },
  { string.match, "2024-01-15", "(%d+)-(%d+)-(%d+)" },
  { string.match, "abc", "()b()" },
  { string.match, "abc", "x" },
  { string.match, "abc", "b", -1 },
  { string.match, "abc", "c", -1 },
  { string.match, "abc", "^(a)" },
  { string.match, "", ".*" },
  { string.match, "", "^$" },
  { string.match, "hello", "", 3 },
  { string.match, "hello", ".", 10 },
  { string.match, "[[nested]]", "%[(%b[])%]" },
  { string.match, "say \"hi\" now", "\"(.-)\"" },
  { string.match, "path/to/file.txt", "([^/]+)$" },
  { string.match, "path/to/file.txt", "^(.*)/" },
  { string.match, "a,b,,c", "^(.-),(.-),(.-),(.-)$" },
  -- gmatch
  { gm, "one two  three", "%a+" },
  { gm, "k1=v1, k2=v2", "(%w+)=(%w+)" },
  { gm, "abc", "" },
  { gm, "abc", "()", 2 },
  { gm, "hello", "l*" },
  { gm, "a,b,,c", "([^,]*)" },
  { gm, "^a^b", "^%a" },
  { gm, "abc", ".", 10 },
  { gm, "abc", ".", -1 },
  { gm, "abc", ".", 0 },
  { gm, "x", "(" },
  -- gsub
  { string.gsub, "hello world", "o", "0" },
  { string.gsub, "hello world", "(o)", "[%1]" },
  { string.gsub, "hello", "", "-" },
  { string.gsub, "abc", "%w", "%0%0" },
  { string.gsub, "hello world", "%w+", "%0 %0", 1 },
  { string.gsub, "abc", "^a", "x" },
  { string.gsub, "abc", "^b", "x" },
  { string.gsub, "hello world", "o*", "x" },
  { string.gsub, "$name is $age", "%$(%w+)", { name = "bob", age = 42 } },
  { string.gsub, "$name $x", "%$(%w+)", { name = "bob" } },
  { string.gsub, "abc", "%w", function(c) return c:upper() .. "." end },
  { string.gsub, "abc", "%w", function(c) if c == "b" then return false end return 1 end },
  { string.gsub, "abc", "(a)(b)", function(x, y) return y .. x end },
  { string.gsub, "abc", "b", "%2" },
  { string.gsub, "abc", "b", "%" },
  { string.gsub, "abc", "b", "%x" },
  { string.gsub, "abc", "b", { b = {} } },
  { string.gsub, "abc", "b", true },
  { string.gsub, "abc", "(b)()", "%2" },
  { string.gsub, "abc", "b", 5 },
  { string.gsub, "abc", ".", "x", 0 },
  { string.gsub, "abc", ".", "x", -1 },
  { string.gsub, "hello", "l", "L", 1.0 },
  { string.gsub, "a b", "%s", "%%" },
  { string.gsub, string.rep("ab", 40), "(a)(b)", "%2%1" },
  { string.gsub, "abc", "", "" },
  { string.gsub, "a.b.c", "%.", "/" },
  { string.gsub, "  x  ", "^%s+", "" },
  { string.gsub, "x", "(", "" },
  { string.gsub, "hello", "(l)(l)", "%2%1%0" },
  { function() return ("x.y"):gsub("%.", "/") end },
  { function() return ("key=val"):match("(%w+)=(%w+)") end },
  { function() return ("a1b2"):find("%d") end },
}

function run_cases()
  local out = {}
  for i, c in ipairs(cases) do
    out[i] = i .. ": " .. try(table.unpack(c, 1, 5))
  end
  return table.concat(out, "\n")
end

function decide(action)
  local got, want = run_cases(), action.input.expected
  if got == want then
    return { verdict = "allow", rule = "same", reason = "all cases agree" }
  end
  local g, w = {}, {}
  for line in got:gmatch("[^\n]+") do g[#g + 1] = line end
  for line in want:gmatch("[^\n]+") do w[#w + 1] = line end
  for i = 1, math.max(#g, #w) do
    if g[i] ~= w[i] then
      return { verdict = "deny", rule = "differs",
               reason = "sandbox " .. tostring(g[i]) .. " / stock " .. tostring(w[i]) }
    end
  end
  return { verdict = "deny", rule = "differs", reason = "lengths differ" }
end
