import type { Command } from "commander";

/**
 * `itx completion bash|zsh`: a completion script generated from the command tree itself,
 * so it never falls behind the commands. zsh uses the same function through bashcompinit.
 */
export function registerCompletion(program: Command): void {
  program
    .command("completion")
    .description('print a shell completion script: eval "$(itx completion bash)" (or zsh)')
    .argument("<shell>", "bash or zsh")
    .action((shell: string) => {
      if (shell !== "bash" && shell !== "zsh") {
        process.stderr.write("itx: usage: completion takes bash or zsh\n");
        process.exitCode = 2;
        return;
      }
      const prelude = shell === "zsh" ? "autoload -U +X bashcompinit && bashcompinit\n" : "";
      process.stdout.write(prelude + bashScript(program));
    });
}

/** Each command path ("", "images", "images list") with the words that may follow it. */
function completions(command: Command, path: string[] = [], out = new Map<string, string[]>()): Map<string, string[]> {
  const words = [...command.commands.map((c) => c.name()), ...command.options.map((o) => o.long).filter((l): l is string => !!l)];
  out.set(path.join(" "), words.filter((w) => w !== "help"));
  for (const sub of command.commands) completions(sub, [...path, sub.name()], out);
  return out;
}

function bashScript(program: Command): string {
  const all = completions(program);
  const cases = [...all].map(([path, words]) => `    "${path}") words="${words.join(" ")}" ;;`).join("\n");
  const known = [...all.keys()].filter((p) => p !== "").map((p) => `"${p}"`).join(" ");
  return `_itx() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" path="" word i
  # The command path: the words before the cursor that are not options or their values.
  for ((i = 1; i < COMP_CWORD; i++)); do
    word="\${COMP_WORDS[i]}"
    [[ "$word" == -* ]] && continue
    [[ -n "$path" && "\${COMP_WORDS[i-1]}" == --* ]] && continue
    path="\${path:+$path }$word"
  done
  # Arguments (an image id) are not commands: drop trailing words until the path is a command.
  local known=(${known})
  while [[ -n "$path" && " \${known[*]} " != *" $path "* ]]; do
    [[ "$path" == *" "* ]] && path="\${path% *}" || path=""
  done
  local words=""
  case "$path" in
${cases}
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _itx itx
`;
}
