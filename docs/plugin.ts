/**
 * TypeDoc plugin of the API site: readable page names and file names.
 *
 * - a module is named after its file (`CancelConnection`, `PgAdapter`, …), not its path (`core/src/CancelConnection`):
 *   module names are unique across the packages, and each is the name users import it by;
 * - a guide (a `projectDocuments` entry) is titled by its `# heading` (up to a colon) and its page is named after its
 *   file: `docs/adapters/pg.md` → `documents/adapters-pg.html`, `bench/README.md` → `documents/bench.html`.
 *
 * The navigation and the index group them: the guides first ("Guides"), then each package's modules (a module's
 * category is its package, `@pqcancel/core`, …); the guides in the order of {@link guideOrder} (a reader's order), any
 * other after them. The router `pqcancel` is TypeDoc's default `kind` router with those document file names.
 */
import {
  type Application,
  CommentTag,
  Converter,
  type DocumentReflection,
  KindRouter,
  type Reflection,
  ReflectionKind
} from "typedoc"

const fileNames = new WeakMap<Reflection, string>()

const guideOrder = [
  "getting-started",
  "adapters-sql-pg",
  "adapters-pg",
  "adapters-postgres-js",
  "cancel-on-interrupt",
  "poolers-and-proxies",
  "tls-and-gss",
  "configuration",
  "errors",
  "metrics-and-tracing",
  "libpq-api",
  "differences-from-libpq",
  "reliability",
  "cluster",
  "examples",
  "testing",
  "benchmarks",
  "bench",
  "supported-versions",
  "runtimes"
]
const rank = (reflection: Reflection): number => {
  const fileName = fileNames.get(reflection)
  if (fileName === undefined) return guideOrder.length + 1 // a module
  const index = guideOrder.indexOf(fileName)
  return index === -1 ? guideOrder.length : index
}

// TypeDoc names a document by its path from the repository root, without the extension
const fileNameOf = (path: string): string => path.replace(/^docs\//, "").replace(/\/README$/, "").replaceAll("/", "-")

class GuideRouter extends KindRouter {
  protected override getIdealBaseName(reflection: Reflection): string {
    const fileName = fileNames.get(reflection)
    return fileName === undefined ? super.getIdealBaseName(reflection) : `documents/${fileName}`
  }
}

export const load = (app: Application): void => {
  app.renderer.defineRouter("pqcancel", GuideRouter)
  app.converter.on(Converter.EVENT_CREATE_DOCUMENT, (_context, document: DocumentReflection) => {
    fileNames.set(document, fileNameOf(document.name))
    document.frontmatter["category"] = "Guides"
    const text = document.content.map((part) => part.text).join("")
    const heading = /^# (.+)$/m.exec(text)?.[1]
    if (heading !== undefined) document.name = heading.split(":")[0]!.replaceAll("`", "").trim()
  })
  app.converter.on(Converter.EVENT_RESOLVE_BEGIN, (context) => {
    const order = (a: Reflection, b: Reflection) => rank(a) - rank(b)
    context.project.documents?.sort(order)
    // the navigation lists this one: documents first in their order, then the modules (a stable sort)
    context.project.childrenIncludingDocuments?.sort(order)
    for (const module of context.project.getReflectionsByKind(ReflectionKind.Module)) {
      const [pkg] = module.name.split("/")
      module.name = module.name.split("/").at(-1)!
      module.comment?.blockTags.push(new CommentTag("@category", [{ kind: "text", text: `@pqcancel/${pkg}` }]))
    }
  })
}
