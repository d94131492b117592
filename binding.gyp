{
  "variables": {
    # librbd is optional: with its headers present (Debian: librbd-dev) the addon gets the RBD
    # backing; without them (or with VBC_WITHOUT_RBD=1 in the environment, to check that build)
    # native/rbd compiles to `rbd.available = false`. librbd ships no pkg-config file.
    "with_rbd": "<!(node -p \"process.env.VBC_WITHOUT_RBD !== '1' && require('fs').existsSync('/usr/include/rbd/librbd.h') ? 1 : 0\")"
  },
  "targets": [
    {
      "target_name": "vhost_blk_cache",
      "sources": [
        "<!@(node -e \"const fs=require('fs');const p=require('path');const out=[];(function w(d){for(const e of fs.readdirSync(d,{withFileTypes:true})){const f=p.join(d,e.name);if(e.isDirectory())w(f);else if(f.endsWith('.cc'))out.push(f);}})('native');console.log(out.sort().join(' '))\")"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native"
      ],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "conditions": [
        ["with_rbd==1", {
          "defines": ["VBC_HAVE_RBD"],
          "libraries": ["-lrbd", "-lrados"]
        }]
      ]
    }
  ]
}
